// Shared by the CPU (ops.cpp) and CUDA (*.cu) implementations: input checks and shape helpers.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace native_megatron {

// Number of rows when the last dimension is the feature dimension.
inline int64_t rows_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.numel() / t.size(-1); }

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_floating_point(), name, " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK(a.device() == b.device(), na, " and ", nb, " must be on the same device");
}

}  // namespace native_megatron
