// Rotary position embedding on CUDA (schema, CPU version and the formula: ops.cpp).
//
// One thread per pair (j, j + rot/2) of one head: it reads both elements and their angles, computes
// sin/cos in fp32, and writes both outputs, so each element is read and written once. Dimensions past
// the rotary ones are copied. x may be a strided view (query/key sliced out of the fused QKV
// projection) as long as its last dimension is contiguous; the output is contiguous.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "common.h"
#include "cuda_utils.cuh"

namespace native_megatron {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void rope_kernel(const scalar_t* __restrict__ x, const float* __restrict__ freqs, scalar_t* __restrict__ y,
                            int64_t B, int64_t H, int64_t D, int64_t R, int64_t xs0, int64_t xs1, int64_t xs2,
                            int64_t fs0, int64_t fs1, int64_t total, bool inverse) {
  // Work items per head: R/2 rotated pairs, then D - R copied elements.
  const int64_t half = R / 2, per_head = half + (D - R);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t item = idx % per_head, head = idx / per_head;
    const int64_t h = head % H, b = (head / H) % B, s = head / (H * B);
    const scalar_t* xr = x + s * xs0 + b * xs1 + h * xs2;
    scalar_t* yr = y + ((s * B + b) * H + h) * D;
    if (item < half) {
      const float* fr = freqs + s * fs0 + b * fs1;
      const int64_t j = item;
      float s1, c1, s2, c2;
      sincosf(fr[j], &s1, &c1);
      sincosf(fr[j + half], &s2, &c2);
      const acc_t a = static_cast<acc_t>(xr[j]), bb = static_cast<acc_t>(xr[j + half]);
      if (!inverse) {
        yr[j] = static_cast<scalar_t>(a * c1 - bb * s1);
        yr[j + half] = static_cast<scalar_t>(bb * c2 + a * s2);
      } else {
        yr[j] = static_cast<scalar_t>(a * c1 + bb * s2);
        yr[j + half] = static_cast<scalar_t>(bb * c2 - a * s1);
      }
    } else {
      const int64_t j = R + (item - half);
      yr[j] = xr[j];
    }
  }
}

at::Tensor rope_cuda(const at::Tensor& x_in, const at::Tensor& freqs_in, bool inverse) {
  check_float(x_in, "x");
  check_same_device(x_in, freqs_in, "x", "freqs");
  TORCH_CHECK(x_in.dim() == 4, "rope: x must be [seq, batch, heads, dim]");
  TORCH_CHECK(freqs_in.dim() == 4 && freqs_in.size(0) == x_in.size(0) && freqs_in.size(2) == 1 &&
                  (freqs_in.size(1) == 1 || freqs_in.size(1) == x_in.size(1)),
              "rope: freqs must be [seq, 1 or batch, 1, rot]");
  const int64_t R = freqs_in.size(3);
  TORCH_CHECK(R % 2 == 0 && R <= x_in.size(3), "rope: rotary dim must be even and <= head dim");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const at::Tensor f = freqs_in.to(at::kFloat).contiguous();
  const int64_t S = x.size(0), B = x.size(1), H = x.size(2), D = x.size(3);
  at::Tensor y = at::empty({S, B, H, D}, x.options());
  const int64_t total = S * B * H * (R / 2 + (D - R));
  if (total == 0) return y;
  const int64_t fs0 = f.stride(0), fs1 = f.size(1) == 1 ? 0 : f.stride(1);
  const int threads = 256;
  const int blocks = cuda::blocks_for(total, threads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rope_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    rope_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), B, H, D, R, x.stride(0), x.stride(1),
        x.stride(2), fs0, fs1, total, inverse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(native_megatron, CUDA, m) { m.impl("rope", &rope_cuda); }

}  // namespace native_megatron
