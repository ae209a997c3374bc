#pragma once
// IWYU pragma: private
/// \file
/// \brief The cost model that picks the Toeplitz algorithm when options::toeplitz is `automatic`.

#include "../fft/backend.hpp"
#include "../types.hpp"
#include "toeplitz_banded.hpp"
#include "toeplitz_fft.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace linrpe {
namespace detail {

/// \brief Seconds per unit of work, measured on the development machine (see docs/notes-toeplitz.md).
///
/// gemm: one multiply-add of a blocked Eigen GEMM; weight: one entry of the weighted score matrix (the
/// table multiply and the write-back); fft: one 5·L·log2 L "flop" of a complex transform (fill, spectrum
/// product and contraction are folded into `lane`, per lane and per point). Only the ratios matter.
struct toeplitz_cost_constants {
    double gemm, weight, fft, lane;
};

template <class S, class Backend>
constexpr toeplitz_cost_constants toeplitz_costs()
{
    constexpr bool is_float = std::is_same<S, float>::value;
    if constexpr (std::is_same<Backend, fft::eigen>::value)
        return is_float ? toeplitz_cost_constants{1.0e-11, 1.0e-10, 2.0e-10, 2.0e-9}
                        : toeplitz_cost_constants{2.0e-11, 1.5e-10, 5.0e-10, 3.0e-9};
    else
        return is_float ? toeplitz_cost_constants{1.0e-11, 1.0e-10, 5.0e-11, 2.0e-9}
                        : toeplitz_cost_constants{2.0e-11, 1.5e-10, 1.0e-10, 3.0e-9};
}

/// Predicted seconds of each algorithm for one head (N queries, Nk keys, widths M and Ex).
struct toeplitz_costs_t {
    double dense, fft, banded;
};

template <class S, class Backend = fft::default_backend>
toeplitz_costs_t toeplitz_predict(index n, index nk, index m, index ex, index t_max, bool causal)
{
    const auto k = toeplitz_costs<S, Backend>();
    const double dn = double(n), dk = double(nk), dm = double(m), de = double(ex);
    // dense: every visible (i, j) pair once (about half of them when causal).
    const double pairs = causal ? std::min(dn * dk, 0.5 * dn * (std::min(dn, dk) + 128.0)) : dn * dk;
    const double dense = pairs * (k.gemm * (dm + de) + k.weight);
    // fft: M·Ex real channels in M·Ex/2 complex lanes, two transforms each, plus per-point lane work.
    const double length = double(fft_fast_length(std::max<index>(n + nk - 1, 1)));
    const double lanes = std::ceil(dm * de / 2.0);
    const double fft = lanes * (2.0 * k.fft * 5.0 * length * std::log2(std::max(length, 2.0)) + k.lane * length);
    // banded: rectangle of (R + 2T − 2) keys per row (R + T − 1 when causal) plus the far-state GEMMs.
    const double rb = double(banded_block(t_max));
    const double width = std::min(dk, causal ? rb + double(t_max) - 1.0 : rb + 2.0 * double(t_max) - 2.0);
    const double sweeps = causal ? 1.0 : 2.0;
    const double banded = dn * width * (k.gemm * (dm + de) + k.weight) + sweeps * (dn + dk) * dm * de * k.gemm;
    return {dense, fft, banded};
}

/// The algorithm `automatic` runs: the cheapest by toeplitz_predict.
template <class S, class Backend = fft::default_backend>
toeplitz_algorithm toeplitz_choose(index n, index nk, index m, index ex, index t_max, bool causal)
{
    const auto c = toeplitz_predict<S, Backend>(n, nk, m, ex, t_max, causal);
    if (c.banded <= c.dense && c.banded <= c.fft) return toeplitz_algorithm::banded;
    return c.dense <= c.fft ? toeplitz_algorithm::dense : toeplitz_algorithm::fft;
}

} // namespace detail
} // namespace linrpe
