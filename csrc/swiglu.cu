// SwiGLU forward and backward on CUDA (schema, CPU version and formulas: ops.cpp).
//
// x is [..., 2F] = [gate | up]; each thread handles VEC consecutive outputs of one row with 16-byte
// loads of gate and up (when F and the pointers allow), so the op runs at memory speed.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_utils.cuh"

namespace native_megatron {
namespace {

using cuda::Vec;

template <typename scalar_t, typename acc_t, int VEC>
__global__ void swiglu_fwd_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t F,
                                  int64_t total_vec) {
  const int64_t fv = F / VEC;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total_vec;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / fv, i = idx % fv;
    const auto g = reinterpret_cast<const Vec<scalar_t, VEC>*>(x + r * 2 * F)[i];
    const auto u = reinterpret_cast<const Vec<scalar_t, VEC>*>(x + r * 2 * F + F)[i];
    Vec<scalar_t, VEC> o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t a = static_cast<acc_t>(g.v[k]);
      o.v[k] = static_cast<scalar_t>(a / (acc_t(1) + exp(-a)) * static_cast<acc_t>(u.v[k]));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(y + r * F)[i] = o;
  }
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void swiglu_bwd_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                  scalar_t* __restrict__ dx, int64_t F, int64_t total_vec) {
  const int64_t fv = F / VEC;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total_vec;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / fv, i = idx % fv;
    const auto g = reinterpret_cast<const Vec<scalar_t, VEC>*>(x + r * 2 * F)[i];
    const auto u = reinterpret_cast<const Vec<scalar_t, VEC>*>(x + r * 2 * F + F)[i];
    const auto d = reinterpret_cast<const Vec<scalar_t, VEC>*>(dy + r * F)[i];
    Vec<scalar_t, VEC> dg, du;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t a = static_cast<acc_t>(g.v[k]), b = static_cast<acc_t>(u.v[k]), e = static_cast<acc_t>(d.v[k]);
      const acc_t sig = acc_t(1) / (acc_t(1) + exp(-a));
      dg.v[k] = static_cast<scalar_t>(e * b * sig * (acc_t(1) + a * (acc_t(1) - sig)));
      du.v[k] = static_cast<scalar_t>(e * a * sig);
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(dx + r * 2 * F)[i] = dg;
    reinterpret_cast<Vec<scalar_t, VEC>*>(dx + r * 2 * F + F)[i] = du;
  }
}

template <typename scalar_t>
bool can_vectorise(int64_t F, std::initializer_list<const void*> ptrs) {
  if (F % cuda::vec_width<scalar_t>() != 0) return false;
  for (const void* p : ptrs)
    if (!cuda::aligned16(p)) return false;
  return true;
}

at::Tensor swiglu_fwd_cuda(const at::Tensor& x_in) {
  check_float(x_in, "x");
  TORCH_CHECK(x_in.size(-1) % 2 == 0, "swiglu: last dimension must be even");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t F = x.size(-1) / 2, rows = rows_of(x);
  auto shape = x.sizes().vec();
  shape.back() = F;
  at::Tensor y = at::empty(shape, x.options());
  if (rows * F == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swiglu_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = cuda::vec_width<scalar_t>();
    if (can_vectorise<scalar_t>(F, {x.data_ptr(), y.data_ptr()})) {
      const int64_t total = rows * F / V;
      swiglu_fwd_kernel<scalar_t, acc_t, V><<<cuda::blocks_for(total, 256), 256, 0, stream>>>(
          x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), F, total);
    } else {
      const int64_t total = rows * F;
      swiglu_fwd_kernel<scalar_t, acc_t, 1><<<cuda::blocks_for(total, 256), 256, 0, stream>>>(
          x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), F, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor swiglu_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& x_in) {
  TORCH_CHECK(x_in.size(-1) == 2 * dy_in.size(-1), "swiglu_bwd: x must be twice as wide as dy");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous().to(x.scalar_type());
  const int64_t F = dy.size(-1), rows = rows_of(x);
  at::Tensor dx = at::empty_like(x);
  if (rows * F == 0) return dx;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swiglu_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = cuda::vec_width<scalar_t>();
    if (can_vectorise<scalar_t>(F, {x.data_ptr(), dy.data_ptr(), dx.data_ptr()})) {
      const int64_t total = rows * F / V;
      swiglu_bwd_kernel<scalar_t, acc_t, V><<<cuda::blocks_for(total, 256), 256, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), F, total);
    } else {
      const int64_t total = rows * F;
      swiglu_bwd_kernel<scalar_t, acc_t, 1><<<cuda::blocks_for(total, 256), 256, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), F, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(native_megatron, CUDA, m) {
  m.impl("swiglu_fwd", &swiglu_fwd_cuda);
  m.impl("swiglu_bwd", &swiglu_bwd_cuda);
}

}  // namespace native_megatron
