// RMSNorm forward and backward on CUDA (schemas and CPU versions: ops.cpp).
//
// Forward: one block per row; the row is read twice (sum of squares, then the scaled output), the
// second time mostly from L1/L2. Backward: one block per row for dx (it needs the row's dot
// product), and a second kernel for dw that gives each thread a few columns and a slice of the rows,
// so dw is summed in registers and only [row_groups, hidden] fp32 partials reach memory.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_utils.cuh"

namespace native_megatron {
namespace {

using cuda::Vec;

template <typename scalar_t, typename acc_t, int VEC>
__global__ void rmsnorm_fwd_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ w,
                                   scalar_t* __restrict__ y, acc_t* __restrict__ rstd, int64_t n, acc_t eps) {
  __shared__ acc_t shared[32];
  const int64_t row = blockIdx.x;
  const scalar_t* xr = x + row * n;
  scalar_t* yr = y + row * n;
  const int64_t nvec = n / VEC;
  acc_t ss = 0;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto v = reinterpret_cast<const Vec<scalar_t, VEC>*>(xr)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t a = static_cast<acc_t>(v.v[k]);
      ss += a * a;
    }
  }
  ss = cuda::block_sum(ss, shared);
  const acc_t inv = rsqrt(ss / static_cast<acc_t>(n) + eps);
  if (threadIdx.x == 0) rstd[row] = inv;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto v = reinterpret_cast<const Vec<scalar_t, VEC>*>(xr)[i];
    Vec<scalar_t, VEC> o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<scalar_t>(static_cast<acc_t>(v.v[k]) * inv * w[i * VEC + k]);
    reinterpret_cast<Vec<scalar_t, VEC>*>(yr)[i] = o;
  }
}

template <typename scalar_t, typename acc_t, int VEC>
__global__ void rmsnorm_dx_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                  const acc_t* __restrict__ w, const acc_t* __restrict__ rstd,
                                  scalar_t* __restrict__ dx, int64_t n) {
  __shared__ acc_t shared[32];
  const int64_t row = blockIdx.x;
  const scalar_t* xr = x + row * n;
  const scalar_t* gr = dy + row * n;
  const acc_t inv = rstd[row];
  const int64_t nvec = n / VEC;
  acc_t dot = 0;
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto xv = reinterpret_cast<const Vec<scalar_t, VEC>*>(xr)[i];
    const auto gv = reinterpret_cast<const Vec<scalar_t, VEC>*>(gr)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      dot += static_cast<acc_t>(xv.v[k]) * inv * w[i * VEC + k] * static_cast<acc_t>(gv.v[k]);
  }
  const acc_t mean = cuda::block_sum(dot, shared) / static_cast<acc_t>(n);
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const auto xv = reinterpret_cast<const Vec<scalar_t, VEC>*>(xr)[i];
    const auto gv = reinterpret_cast<const Vec<scalar_t, VEC>*>(gr)[i];
    Vec<scalar_t, VEC> o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t xh = static_cast<acc_t>(xv.v[k]) * inv;
      o.v[k] = static_cast<scalar_t>(inv * (w[i * VEC + k] * static_cast<acc_t>(gv.v[k]) - xh * mean));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(dx + row * n)[i] = o;
  }
}

// partial[group, col] = sum over this group's rows of dy * x * rstd. Threads own VEC columns each.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void rmsnorm_dw_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                  const acc_t* __restrict__ rstd, acc_t* __restrict__ partial, int64_t rows,
                                  int64_t n, int64_t rows_per_group) {
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (col >= n) return;
  const int64_t r0 = blockIdx.y * rows_per_group;
  const int64_t r1 = min(rows, r0 + rows_per_group);
  acc_t acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const auto xv = *reinterpret_cast<const Vec<scalar_t, VEC>*>(x + r * n + col);
    const auto gv = *reinterpret_cast<const Vec<scalar_t, VEC>*>(dy + r * n + col);
    const acc_t inv = rstd[r];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += static_cast<acc_t>(gv.v[k]) * static_cast<acc_t>(xv.v[k]) * inv;
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) partial[blockIdx.y * n + col + k] = acc[k];
}

int threads_for(int64_t n_vec) {
  int t = 32;
  while (t < 1024 && t < n_vec) t *= 2;
  return t;
}

// Vector width: 16 bytes when every row starts 16-byte aligned, else one element at a time.
template <typename scalar_t>
int pick_vec(int64_t n, const void* a, const void* b = nullptr) {
  constexpr int V = cuda::vec_width<scalar_t>();
  const bool ok = n % V == 0 && cuda::aligned16(a) && (b == nullptr || cuda::aligned16(b));
  return ok ? V : 1;
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_fwd_cuda(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  check_float(x_in, "x");
  check_same_device(x_in, weight, "x", "weight");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x_in.size(-1), "weight must have shape [", x_in.size(-1), "]");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(-1), rows = rows_of(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({rows}, x.options().dtype(acc_type));
  if (rows == 0) return {y, rstd};
  const at::Tensor w = weight.to(acc_type).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmsnorm_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = cuda::vec_width<scalar_t>();
    const int vec = pick_vec<scalar_t>(n, x.data_ptr());
    const int threads = threads_for(n / vec);
    if (vec == V) {
      rmsnorm_fwd_kernel<scalar_t, acc_t, V><<<rows, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), rstd.data_ptr<acc_t>(), n,
          static_cast<acc_t>(eps));
    } else {
      rmsnorm_fwd_kernel<scalar_t, acc_t, 1><<<rows, threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), rstd.data_ptr<acc_t>(), n,
          static_cast<acc_t>(eps));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_bwd_cuda(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                    const at::Tensor& weight, const at::Tensor& rstd_in) {
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "dy and x must have the same shape");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous().to(x.scalar_type());
  const int64_t n = x.size(-1), rows = rows_of(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor w = weight.to(acc_type).contiguous(), rstd = rstd_in.to(acc_type).contiguous();
  TORCH_CHECK(rstd.numel() == rows, "rstd must have one value per row");
  at::Tensor dx = at::empty_like(x);
  if (rows == 0) return {dx, at::zeros_like(weight)};
  // Enough row groups to fill the GPU, each long enough to amortise its partial row.
  const int64_t groups = std::min<int64_t>(rows, 256);
  const int64_t rows_per_group = (rows + groups - 1) / groups;
  at::Tensor partial = at::empty({groups, n}, x.options().dtype(acc_type));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rmsnorm_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = cuda::vec_width<scalar_t>();
    const int vec = pick_vec<scalar_t>(n, x.data_ptr(), dy.data_ptr());
    const int threads = threads_for(n / vec);
    const dim3 dw_grid(static_cast<unsigned>((n / vec + 127) / 128), static_cast<unsigned>(groups));
    if (vec == V) {
      rmsnorm_dx_kernel<scalar_t, acc_t, V><<<rows, threads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(),
          dx.data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      rmsnorm_dw_kernel<scalar_t, acc_t, V><<<dw_grid, 128, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), rstd.data_ptr<acc_t>(), partial.data_ptr<acc_t>(), rows,
          n, rows_per_group);
    } else {
      rmsnorm_dx_kernel<scalar_t, acc_t, 1><<<rows, threads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(),
          dx.data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      rmsnorm_dw_kernel<scalar_t, acc_t, 1><<<dw_grid, 128, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), rstd.data_ptr<acc_t>(), partial.data_ptr<acc_t>(), rows,
          n, rows_per_group);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, partial.sum(0).to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(native_megatron, CUDA, m) {
  m.impl("rmsnorm_fwd", &rmsnorm_fwd_cuda);
  m.impl("rmsnorm_bwd", &rmsnorm_bwd_cuda);
}

}  // namespace native_megatron
