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

/// \brief Seconds per unit of work of one head on one core, measured on the development machine
/// (x86-64 with AVX-512, GCC 12 -O3 -march=native, Eigen 3.4; `calibrate` in benchmarks/bm_toeplitz.cpp,
/// M = 64, Ex = 65; numbers in docs/notes-toeplitz.md). Only the ratios matter for the choice.
///
/// - gemm:   one multiply-add inside the score / value GEMMs, per (query, key) pair and channel of M + Ex
///           (dense at N = 1024 and 4096 both gave 3.6 ns per pair = 129·gemm + weight);
/// - weight: the remaining per-pair work (offset-table multiply, write-back);
/// - state:  one multiply-add of the banded far-state GEMMs (64-row blocks, less efficient than the big
///           GEMMs: fitted to 10 ms for N = 16384 at every T_max);
/// - fft:    per transform and point: FFTW, seconds per unit of 5·log2 L (2.4–2.8e-11 in float from
///           L = 2^13 to 2^16, FFTW_ESTIMATE plans; double assumed 2×); Eigen, a factor on the kissfft stage
///           model kissfft_point_ns (1e-9 in float: the model is in ns; 2.1e-9 in double, measured);
/// - lane:   per point and lane, the fill, spectrum product and contraction around the transforms (4 ns;
///           plus 2 ns per doubling of L beyond 2^14, where the three tile buffers leave the caches:
///           fitted to the fft rows of the benchmark table).
struct toeplitz_cost_constants {
    double gemm, weight, state, fft, lane;
};

template <class S, class Backend>
constexpr toeplitz_cost_constants toeplitz_costs()
{
    constexpr bool is_float = std::is_same<S, float>::value;
    // Doubles: half the SIMD width for the GEMMs.
    constexpr double gemm = is_float ? 2.5e-11 : 5.0e-11, weight = is_float ? 4.0e-10 : 6.0e-10,
                     state = is_float ? 4.0e-11 : 8.0e-11, lane = is_float ? 4.0e-9 : 6.0e-9;
    if constexpr (std::is_same<Backend, fft::eigen>::value)
        return {gemm, weight, state, is_float ? 1.0e-9 : 2.1e-9, lane};
    else
        return {gemm, weight, state, is_float ? 2.6e-11 : 5.2e-11, lane};
}

/// Seconds per lane (two transforms of length `length` plus the lane work) for backend B.
template <class S, class Backend>
double toeplitz_fft_lane_seconds(index length)
{
    const auto k = toeplitz_costs<S, Backend>();
    const double l = double(length), bits = std::log2(std::max(l, 2.0));
    const double lane = k.lane * (1.0 + 0.5 * std::max(0.0, bits - 14.0));
    if constexpr (std::is_same<Backend, fft::eigen>::value) return l * (2.0 * k.fft * kissfft_point_ns(length) + lane);
    else return l * (2.0 * k.fft * 5.0 * bits + lane);
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
    const double pair = k.gemm * (dm + de) + k.weight;
    // dense: every visible (i, j) pair once (about half of them when causal, plus the diagonal blocks).
    const double pairs = causal ? std::min(dn * dk, 0.5 * dn * (std::min(dn, dk) + 128.0)) : dn * dk;
    const double dense = pairs * pair;
    // fft: M·Ex real channels in M·Ex/2 complex lanes, two transforms each, plus per-point lane work.
    const index length = fft_length_for<Backend>(n + nk - 1);
    const double fft = std::ceil(dm * de / 2.0) * toeplitz_fft_lane_seconds<S, Backend>(length);
    // banded: a rectangle of R + 2T − 2 keys per row (R + T − 1 when causal) plus the far-state GEMMs
    // (state growth over the keys and Ψ_b S over the queries, once per sweep).
    const double rb = double(banded_block(t_max));
    const double width = std::min(dk, causal ? rb + double(t_max) - 1.0 : rb + 2.0 * double(t_max) - 2.0);
    const double sweeps = causal ? 1.0 : 2.0;
    const double banded = dn * width * pair + sweeps * (dn + dk) * dm * de * k.state;
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
