"""ArabicMMLU's prompt (util_prompt.py ``prepare_data_ar``, base models) written for lm-evaluation-harness.

Kept apart from native_megatron so that the parity test compares two implementations.
"""

LEVEL = {"Primary": "للمرحلة الابتدائية", "Middle": "للمرحلة المتوسطة", "High": "للمرحلة الثانوية",
         "Univ": "للجامعات", "Prof": "للمحترفين"}
COUNTRY = {"UAE": "في دولة الإمارات العربية المتحدة", "Egypt": "في مصر", "Lebanon": "في لبنان",
           "Jordan": "في الأردن", "Kuwait": "في الكويت", "KSA": "في المملكة العربية السعودية",
           "Palestine": "في فلسطين", "Morocco": "في المغرب"}
SUBJECT = {"Islamic Studies": "في الدراسات الإسلامية", "Driving Test": "اختبار القيادة", "History": "في التاريخ",
           "Geography": "في الجغرافيا", "Math": "في الرياضيات", "Biology": "في علم الأحياء",
           "Arabic Language (General)": "في اللغة العربية (عام)",
           "Arabic Language (Grammar)": "في اللغة العربية (قواعد النحو)", "Civics": "في التربية المدنية"}
LABELS = ["أ-", "ب-", "ج-", "د-", "ه-"]


def _options(doc):
    out = []
    for i in range(1, 6):
        if not doc.get(f"Option {i}"):
            break
        out.append(doc[f"Option {i}"])
    return out


def arabicmmlu_ar(doc):
    meta = SUBJECT[doc["Subject"]] + (" " + LEVEL[doc["Level"]] if doc.get("Level") else "") + \
        (" " + COUNTRY[doc["Country"]] if doc.get("Country") else "")
    question = f"{doc['Context']}\n\n{doc['Question']}" if doc.get("Context") else doc["Question"]
    options = "\n".join(f"{LABELS[i]} {o}" for i, o in enumerate(_options(doc)))
    return f"هذا سؤال {meta}. اختر الإجابة الصحيحة!\n\nسؤال: {question}\n{options}\n\nإجابة: "


def arabic_letters(doc):
    return ["أ", "ب", "ج", "د", "ه"][:len(_options(doc))]


def answer_index(doc):
    return "ABCDE".index(doc["Answer Key"])
