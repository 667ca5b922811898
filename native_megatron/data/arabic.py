"""The Arabic script's character sets, shared by cleaning and the dedup key."""

from __future__ import annotations

TATWEEL = "\u0640"
ALEF = "\u0627"
# أ إ آ ٱ: the hamza and madda forms of alef, and alef wasla.
ALEF_VARIANTS = "\u0622\u0623\u0625\u0671"
ALEF_MAKSURA, YAA = "\u0649", "\u064a"
TAA_MARBUTA, HAA = "\u0629", "\u0647"
# Regular-expression class bodies (ranges, without brackets).
# Harakat and tanwin (U+064B-U+065F) and the superscript (dagger) alef U+0670.
HARAKAT = "\u064b-\u065f\u0670"
# Quranic annotation marks: U+06D6-U+06ED without the signs U+06DD, U+06DE, U+06E9 in that range.
QURANIC_MARKS = "\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed"
# The whole U+06D6-U+06ED block, signs included: what the exact-dedup key has always ignored.
QURANIC_BLOCK = "\u06d6-\u06ed"
# Small high marks of Arabic Extended-A.
EXTENDED_MARKS = "\u08d3-\u08ff"
