#pragma once
// IWYU pragma: private
/// \file
/// \brief mixer_setup: what the front (linear_attention) tells a mixer about one head call.

#include "../types.hpp"

#include <Eigen/Core>

namespace linrpe {
namespace detail {

/// \brief The resolved configuration of one head call, handed from the front to a mixer.
///
/// A mixer receives the rows of one (batch, head) and two callables of the front: `encode(x, role, first)`
/// returns ψ or κ (rows, M') of the rows x at absolute positions first.., and `normalize(o, den)` applies the
/// call's normalization to numerator rows. Mixers never see the policies themselves.
struct mixer_setup {
    index m = 0;             ///< M', the width of ψ and κ
    bool with_den = false;   ///< normalization::sum: the denominator rides along
    int threads = 0;         ///< OpenMP threads inside the head (0 = default); never changes the result
    index chunk = 32;        ///< options::chunk_size
    index segment_rows = 0;  ///< options::segment_rows
    index kept = 0;          ///< width of φ the backward keeps per block for a post-feature stage's VJP (0: none)
};

/// Rows per block of the fused kernels: the block's features stay in cache between the feature map and the
/// GEMMs (512 × M' floats = 128 KiB for M' = 64). Fixed, so that the summation order (and so the result)
/// never depends on the thread count.
inline constexpr index fused_block = 512;

} // namespace detail
} // namespace linrpe
