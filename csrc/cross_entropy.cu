// Softmax cross-entropy over a (shard of the) vocabulary on CUDA (schema, CPU version: ops.cpp).
//
// Forward: one block per token; each thread keeps an online-softmax pair (running max, sum of
// exp(x - max)) over its strided slice of the row, and the block merges the pairs. The row is read
// once and only three fp32 numbers per token are written. Backward: one pass writing
// grad * (softmax - onehot) in the logits' dtype, from the saved log-sum-exp: no fp32 [tokens, vocab]
// tensor exists at any point.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "common.h"
#include "cuda_utils.cuh"

namespace native_megatron {
namespace {

using cuda::Vec;

template <typename acc_t>
__device__ __forceinline__ void merge(acc_t& m, acc_t& s, acc_t m2, acc_t s2) {
  const acc_t mx = m > m2 ? m : m2;
  if (mx == static_cast<acc_t>(-INFINITY)) return;  // both empty
  s = s * exp(m - mx) + s2 * exp(m2 - mx);
  m = mx;
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void xent_fwd_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ target, int64_t V,
                                int64_t vocab_start, acc_t* __restrict__ out_max, acc_t* __restrict__ out_sum,
                                acc_t* __restrict__ out_target) {
  __shared__ acc_t sm[32], ss[32];
  const int64_t row = blockIdx.x;
  const scalar_t* lr = logits + row * V;
  acc_t m = static_cast<acc_t>(-INFINITY), s = 0;
  const int64_t nvec = V / VEC;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto v = reinterpret_cast<const Vec<scalar_t, VEC>*>(lr)[i];
    acc_t vm = static_cast<acc_t>(v.v[0]);
#pragma unroll
    for (int k = 1; k < VEC; ++k) vm = max(vm, static_cast<acc_t>(v.v[k]));
    acc_t vs = 0;
#pragma unroll
    for (int k = 0; k < VEC; ++k) vs += exp(static_cast<acc_t>(v.v[k]) - vm);
    merge(m, s, vm, vs);
  }
  // Warp merge, then across warps through shared memory.
#pragma unroll
  for (int o = cuda::kWarp / 2; o > 0; o >>= 1) {
    const acc_t m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x % cuda::kWarp, warp = threadIdx.x / cuda::kWarp;
  const int warps = (blockDim.x + cuda::kWarp - 1) / cuda::kWarp;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? sm[lane] : static_cast<acc_t>(-INFINITY);
    s = lane < warps ? ss[lane] : acc_t(0);
#pragma unroll
    for (int o = cuda::kWarp / 2; o > 0; o >>= 1) {
      const acc_t m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
    }
    if (lane == 0) {
      out_max[row] = m;
      out_sum[row] = s;
      const int64_t t = target[row] - vocab_start;
      out_target[row] = (t >= 0 && t < V) ? static_cast<acc_t>(lr[t]) : acc_t(0);
    }
  }
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void xent_bwd_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ logits,
                                const int64_t* __restrict__ target, const acc_t* __restrict__ lse,
                                scalar_t* __restrict__ out, int64_t V, int64_t vocab_start, int64_t total_vec) {
  const int64_t vv = V / VEC;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total_vec;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / vv, i = idx % vv;
    const acc_t g = grad[r], l = lse[r];
    const int64_t t = target[r] - vocab_start;
    const auto v = reinterpret_cast<const Vec<scalar_t, VEC>*>(logits + r * V)[i];
    Vec<scalar_t, VEC> o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t j = i * VEC + k;
      const acc_t p = exp(static_cast<acc_t>(v.v[k]) - l);
      o.v[k] = static_cast<scalar_t>(g * (p - (j == t ? acc_t(1) : acc_t(0))));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(out + r * V)[i] = o;
  }
}

void check_inputs(const at::Tensor& logits, const at::Tensor& target) {
  check_float(logits, "logits");
  check_same_device(logits, target, "logits", "target");
  TORCH_CHECK(logits.dim() == 2, "cross_entropy: logits must be [tokens, vocab]");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), "cross_entropy: target must be [tokens]");
}

template <typename scalar_t>
bool vectorisable(int64_t V, const void* a, const void* b = nullptr) {
  return V % cuda::vec_width<scalar_t>() == 0 && cuda::aligned16(a) && (b == nullptr || cuda::aligned16(b));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> xent_fwd_cuda(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                             int64_t vocab_start) {
  check_inputs(logits_in, target_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), target = target_in.to(at::kLong).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto opts = logits.options().dtype(acc_type);
  at::Tensor mx = at::empty({N}, opts), se = at::empty({N}, opts), tl = at::empty({N}, opts);
  if (N == 0) return {mx, se, tl};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "xent_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VW = cuda::vec_width<scalar_t>();
    if (vectorisable<scalar_t>(V, logits.data_ptr())) {
      xent_fwd_kernel<scalar_t, acc_t, VW><<<N, 512, 0, stream>>>(
          logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), V, vocab_start, mx.data_ptr<acc_t>(),
          se.data_ptr<acc_t>(), tl.data_ptr<acc_t>());
    } else {
      xent_fwd_kernel<scalar_t, acc_t, 1><<<N, 512, 0, stream>>>(
          logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), V, vocab_start, mx.data_ptr<acc_t>(),
          se.data_ptr<acc_t>(), tl.data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mx, se, tl};
}

at::Tensor xent_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& target_in,
                         const at::Tensor& lse_in, int64_t vocab_start) {
  check_inputs(logits_in, target_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), target = target_in.to(at::kLong).contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor grad = grad_in.to(acc_type).contiguous(), lse = lse_in.to(acc_type).contiguous();
  TORCH_CHECK(grad.numel() == N && lse.numel() == N, "cross_entropy backward: grad and lse must be [tokens]");
  at::Tensor out = at::empty_like(logits);
  if (N * V == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "xent_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VW = cuda::vec_width<scalar_t>();
    if (vectorisable<scalar_t>(V, logits.data_ptr(), out.data_ptr())) {
      const int64_t total = N * V / VW;
      xent_bwd_kernel<scalar_t, acc_t, VW><<<cuda::blocks_for(total, 256), 256, 0, stream>>>(
          grad.data_ptr<acc_t>(), logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), lse.data_ptr<acc_t>(),
          out.data_ptr<scalar_t>(), V, vocab_start, total);
    } else {
      const int64_t total = N * V;
      xent_bwd_kernel<scalar_t, acc_t, 1><<<cuda::blocks_for(total, 256), 256, 0, stream>>>(
          grad.data_ptr<acc_t>(), logits.data_ptr<scalar_t>(), target.data_ptr<int64_t>(), lse.data_ptr<acc_t>(),
          out.data_ptr<scalar_t>(), V, vocab_start, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(native_megatron, CUDA, m) {
  m.impl("xent_fwd", &xent_fwd_cuda);
  m.impl("xent_bwd", &xent_bwd_cuda);
}

}  // namespace native_megatron
