// The native_megatron fused ops: schemas (TORCH_LIBRARY), CPU implementations, and the Python module.
//
// Every op computes in fp32 (double for double inputs) whatever the input dtype, and writes its
// outputs in the input dtype; statistics a backward pass needs (rstd, log-sum-exp) stay fp32.
// The CUDA implementations live in one .cu per kernel and register under the same names.
// Python wraps these ops with autograd, fake (meta) kernels for torch.compile, and torch reference
// twins: native_megatron/ops/.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace native_megatron {
namespace {

// ---------------------------------------------------------------- RMSNorm
// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), over the last dimension.
std::tuple<at::Tensor, at::Tensor> rmsnorm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  check_float(x_in, "x");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x_in.size(-1), "weight must have shape [", x_in.size(-1), "]");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(-1), rows = rows_of(x);
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({rows}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmsnorm_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = weight.to(rstd.scalar_type()).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    acc_t* rp = rstd.data_ptr<acc_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * n;
        acc_t ss = 0;
        for (int64_t i = 0; i < n; ++i) ss += static_cast<acc_t>(xr[i]) * static_cast<acc_t>(xr[i]);
        const acc_t inv = acc_t(1) / std::sqrt(ss / acc_t(n) + acc_t(eps));
        rp[r] = inv;
        for (int64_t i = 0; i < n; ++i) yp[r * n + i] = static_cast<scalar_t>(static_cast<acc_t>(xr[i]) * inv * wp[i]);
      }
    });
  });
  return {y, rstd};
}

// dx = rstd * (w*dy - xhat * mean(xhat * w * dy)), dw = sum_rows(dy * xhat), xhat = x * rstd.
std::tuple<at::Tensor, at::Tensor> rmsnorm_bwd_cpu(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                   const at::Tensor& weight, const at::Tensor& rstd) {
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "dy and x must have the same shape");
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous().to(x.scalar_type());
  const int64_t n = x.size(-1), rows = rows_of(x);
  TORCH_CHECK(rstd.numel() == rows, "rstd must have one value per row");
  at::Tensor dx = at::empty_like(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Each chunk of rows sums its share of dw into its own row of `partial`; no two threads share one.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  at::Tensor partial = at::zeros({chunks, n}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmsnorm_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = weight.to(acc_type).contiguous();
    const at::Tensor rs = rstd.to(acc_type).contiguous();
    const acc_t* wp = w.data_ptr<acc_t>();
    const acc_t* rsp = rs.data_ptr<acc_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    acc_t* pp = partial.data_ptr<acc_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
        acc_t* dw = pp + c * n;
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* xr = xp + r * n;
          const scalar_t* dyr = dyp + r * n;
          const acc_t inv = rsp[r];
          acc_t dot = 0;
          for (int64_t i = 0; i < n; ++i) {
            const acc_t xh = static_cast<acc_t>(xr[i]) * inv, g = static_cast<acc_t>(dyr[i]);
            dot += xh * wp[i] * g;
            dw[i] += g * xh;
          }
          const acc_t mean = dot / acc_t(n);
          for (int64_t i = 0; i < n; ++i) {
            const acc_t xh = static_cast<acc_t>(xr[i]) * inv;
            dxp[r * n + i] = static_cast<scalar_t>(inv * (wp[i] * static_cast<acc_t>(dyr[i]) - xh * mean));
          }
        }
      }
    });
  });
  return {dx, partial.sum(0).to(weight.scalar_type())};
}

// ---------------------------------------------------------------- rotary position embedding
// x: [s, b, h, d]; freqs: [s, 1 or b, 1, rot] (fp32 angles, Megatron's layout: the two halves
// of the rotary dimensions hold the same frequencies). Non-interleaved ("rotate half"):
//   y[j] = x[j] cos f[j] - x[j+rot/2] sin f[j]           j <  rot/2
//   y[j] = x[j] cos f[j] + x[j-rot/2] sin f[j]           rot/2 <= j < rot
//   y[j] = x[j]                                          j >= rot (not rotated)
// inverse=true applies the transpose (the backward pass): the same with the sine terms swapped.
void check_rope(const at::Tensor& x, const at::Tensor& freqs) {
  TORCH_CHECK(x.dim() == 4, "rope: x must be [seq, batch, heads, dim], got ", x.dim(), " dimensions");
  TORCH_CHECK(freqs.dim() == 4 && freqs.size(0) == x.size(0) && freqs.size(2) == 1 &&
                  (freqs.size(1) == 1 || freqs.size(1) == x.size(1)),
              "rope: freqs must be [seq, 1 or batch, 1, rot] with seq = ", x.size(0));
  const int64_t rot = freqs.size(3);
  TORCH_CHECK(rot % 2 == 0 && rot <= x.size(3), "rope: rotary dim ", rot, " must be even and <= head dim ", x.size(3));
  check_float(x, "x");
}

at::Tensor rope_cpu(const at::Tensor& x_in, const at::Tensor& freqs_in, bool inverse) {
  check_rope(x_in, freqs_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t S = x.size(0), B = x.size(1), H = x.size(2), D = x.size(3), R = freqs_in.size(3), half = R / 2;
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor f = freqs_in.to(acc_type).contiguous();
  const int64_t FB = freqs_in.size(1);  // 1 (shared by the batch) or B
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* fp = f.data_ptr<acc_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, S * B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> c(R), sn(R);
      for (int64_t sb = begin; sb < end; ++sb) {
        const int64_t s_idx = sb / B, b_idx = sb % B;
        const acc_t* fr = fp + s_idx * FB * R + (FB == 1 ? 0 : b_idx) * R;
        for (int64_t j = 0; j < R; ++j) {
          c[j] = std::cos(fr[j]);
          sn[j] = std::sin(fr[j]);
        }
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t* xr = xp + (sb * H + h) * D;
          scalar_t* yr = yp + (sb * H + h) * D;
          for (int64_t j = 0; j < half; ++j) {
            const acc_t a = static_cast<acc_t>(xr[j]), b = static_cast<acc_t>(xr[j + half]);
            if (!inverse) {
              yr[j] = static_cast<scalar_t>(a * c[j] - b * sn[j]);
              yr[j + half] = static_cast<scalar_t>(b * c[j + half] + a * sn[j + half]);
            } else {
              yr[j] = static_cast<scalar_t>(a * c[j] + b * sn[j + half]);
              yr[j + half] = static_cast<scalar_t>(b * c[j + half] - a * sn[j]);
            }
          }
          for (int64_t j = R; j < D; ++j) yr[j] = xr[j];
        }
      }
    });
  });
  return y;
}

// ---------------------------------------------------------------- SwiGLU
// x: [..., 2F] = [gate | up] (Megatron's gated linear unit layout); y = silu(gate) * up: [..., F].
at::Tensor swiglu_fwd_cpu(const at::Tensor& x_in) {
  check_float(x_in, "x");
  TORCH_CHECK(x_in.size(-1) % 2 == 0, "swiglu: last dimension must be even, got ", x_in.size(-1));
  const at::Tensor x = x_in.contiguous();
  const int64_t f = x.size(-1) / 2, rows = rows_of(x);
  auto shape = x.sizes().vec();
  shape.back() = f;
  at::Tensor y = at::empty(shape, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swiglu_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t i = 0; i < f; ++i) {
          const acc_t g = static_cast<acc_t>(xp[r * 2 * f + i]), u = static_cast<acc_t>(xp[r * 2 * f + f + i]);
          yp[r * f + i] = static_cast<scalar_t>(g / (acc_t(1) + std::exp(-g)) * u);
        }
      }
    });
  });
  return y;
}

// d gate = dy * up * sig(g) * (1 + g * (1 - sig(g))), d up = dy * silu(g).
at::Tensor swiglu_bwd_cpu(const at::Tensor& dy_in, const at::Tensor& x_in) {
  TORCH_CHECK(x_in.size(-1) == 2 * dy_in.size(-1), "swiglu_bwd: x must be twice as wide as dy");
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous().to(x.scalar_type());
  const int64_t f = dy.size(-1), rows = rows_of(x);
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swiglu_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t i = 0; i < f; ++i) {
          const acc_t g = static_cast<acc_t>(xp[r * 2 * f + i]), u = static_cast<acc_t>(xp[r * 2 * f + f + i]);
          const acc_t d = static_cast<acc_t>(dyp[r * f + i]);
          const acc_t sig = acc_t(1) / (acc_t(1) + std::exp(-g));
          dxp[r * 2 * f + i] = static_cast<scalar_t>(d * u * sig * (acc_t(1) + g * (acc_t(1) - sig)));
          dxp[r * 2 * f + f + i] = static_cast<scalar_t>(d * g * sig);
        }
      }
    });
  });
  return dx;
}

// ---------------------------------------------------------------- softmax cross-entropy
// logits: [N, V] (this rank's vocabulary shard [vocab_start, vocab_start + V)); target: [N] global
// ids. Per row, in one pass with an online softmax: max, sum(exp(x - max)), and the target's logit
// (0 when the target lives on another shard). The caller combines shards (tensor parallelism) and
// forms loss = max + log(sum) - target_logit; nothing of size [N, V] is ever made in fp32.
void check_xent(const at::Tensor& logits, const at::Tensor& target) {
  check_float(logits, "logits");
  TORCH_CHECK(logits.dim() == 2, "cross_entropy: logits must be [tokens, vocab]");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), "cross_entropy: target must be [tokens]");
  TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kInt, "target must be int64 or int32");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> xent_fwd_cpu(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                            int64_t vocab_start) {
  check_xent(logits_in, target_in);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.to(at::kLong).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto opts = logits.options().dtype(acc_type);
  at::Tensor mx = at::empty({N}, opts), se = at::empty({N}, opts), tl = at::empty({N}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "xent_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const int64_t* tp = target.data_ptr<int64_t>();
    acc_t *mp = mx.data_ptr<acc_t>(), *sp = se.data_ptr<acc_t>(), *tlp = tl.data_ptr<acc_t>();
    at::parallel_for(0, N, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = lp + r * V;
        acc_t m = -std::numeric_limits<acc_t>::infinity(), s = 0;
        for (int64_t j = 0; j < V; ++j) {
          const acc_t v = static_cast<acc_t>(row[j]);
          if (v > m) {
            s = s * std::exp(m - v) + acc_t(1);
            m = v;
          } else {
            s += std::exp(v - m);
          }
        }
        mp[r] = m;
        sp[r] = s;
        const int64_t t = tp[r] - vocab_start;
        tlp[r] = (t >= 0 && t < V) ? static_cast<acc_t>(row[t]) : acc_t(0);
      }
    });
  });
  return {mx, se, tl};
}

// dlogits[r, j] = grad[r] * (exp(x[r, j] - lse[r]) - [j == target[r] - vocab_start]), in logits' dtype.
at::Tensor xent_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& target_in,
                        const at::Tensor& lse_in, int64_t vocab_start) {
  check_xent(logits_in, target_in);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.to(at::kLong).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor grad = grad_in.to(acc_type).contiguous(), lse = lse_in.to(acc_type).contiguous();
  TORCH_CHECK(grad.numel() == N && lse.numel() == N, "cross_entropy backward: grad and lse must be [tokens]");
  at::Tensor dl = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "xent_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const int64_t* tp = target.data_ptr<int64_t>();
    const acc_t *gp = grad.data_ptr<acc_t>(), *lsep = lse.data_ptr<acc_t>();
    scalar_t* dp = dl.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const acc_t g = gp[r], l = lsep[r];
        const int64_t t = tp[r] - vocab_start;
        for (int64_t j = 0; j < V; ++j) {
          const acc_t p = std::exp(static_cast<acc_t>(lp[r * V + j]) - l);
          dp[r * V + j] = static_cast<scalar_t>(g * (p - (j == t ? acc_t(1) : acc_t(0))));
        }
      }
    });
  });
  return dl;
}

}  // namespace

TORCH_LIBRARY(native_megatron, m) {
  m.def("rmsnorm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rmsnorm_bwd(Tensor dy, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)");
  m.def("rope(Tensor x, Tensor freqs, bool inverse) -> Tensor");
  m.def("swiglu_fwd(Tensor x) -> Tensor");
  m.def("swiglu_bwd(Tensor dy, Tensor x) -> Tensor");
  m.def("xent_fwd(Tensor logits, Tensor target, int vocab_start) -> (Tensor, Tensor, Tensor)");
  m.def("xent_bwd(Tensor grad, Tensor logits, Tensor target, Tensor lse, int vocab_start) -> Tensor");
}

TORCH_LIBRARY_IMPL(native_megatron, CPU, m) {
  m.impl("rmsnorm_fwd", &rmsnorm_fwd_cpu);
  m.impl("rmsnorm_bwd", &rmsnorm_bwd_cpu);
  m.impl("rope", &rope_cpu);
  m.impl("swiglu_fwd", &swiglu_fwd_cpu);
  m.impl("swiglu_bwd", &swiglu_bwd_cpu);
  m.impl("xent_fwd", &xent_fwd_cpu);
  m.impl("xent_bwd", &xent_bwd_cpu);
}

}  // namespace native_megatron

// Importing the module loads the library above; `cuda` says whether CUDA kernels were compiled in.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef NM_WITH_CUDA
  m.attr("cuda") = true;
#else
  m.attr("cuda") = false;
#endif
}
