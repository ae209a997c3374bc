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
/// (x86-64 with AVX-512, GCC 12 -O3 -march=native, Eigen 3.4; bm_toeplitz, M = 64, Ex = 65, float, one
/// thread, CPU time; refitted 2026-12-01 after the causal changes, numbers in docs/notes-toeplitz.md).
/// Only the ratios matter for the choice; the double constants keep their measured ratios to float.
///
/// - gemm:   one multiply-add inside the score / value GEMMs, per (query, key) pair and channel of M + Ex
///           (dense: 1.95 ns per pair = 129·gemm + weight, non-causal N = 4k–32k and causal 8k–64k);
/// - weight: the remaining per-pair work (offset-table multiply, write-back);
/// - state:  one multiply-add of the banded far-state GEMMs (64-row blocks, less efficient than the big
///           GEMMs; fitted to banded T_max = 128 from 256 to 64k, 0.9–1.6 µs per token: the full rate
///           from N = 4096 on, where the head's data leaves the 2 MiB L2, and down to 0.35 of it at 512);
/// - fft:    per transform and point: FFTW, seconds per unit of 5·log2 L (2.4–2.8e-11 in float from
///           L = 2^13 to 2^16, FFTW_ESTIMATE plans; double assumed 2×); Eigen, a factor on the kissfft stage
///           model kissfft_point_ns (0.8e-9 in float: the model is in ns; 1.7e-9 in double);
/// - lane:   per point and lane, the fill, spectrum product and contraction around the transforms (4 ns;
///           plus 2 ns per doubling of L beyond 2^14, where the three tile buffers leave the caches, and
///           lane_far = 9 ns more per doubling beyond 2^16: fitted to the fft rows of the benchmark table,
///           13–40 ns per lane and point from L = 540 to 140625, within 20 %).
struct toeplitz_cost_constants {
    double gemm, weight, state, fft, lane, lane_far;
};

template <class S, class Backend>
constexpr toeplitz_cost_constants toeplitz_costs()
{
    constexpr bool is_float = std::is_same<S, float>::value;
    // Doubles: half the SIMD width for the GEMMs.
    constexpr double gemm = is_float ? 1.2e-11 : 2.4e-11, weight = is_float ? 4.0e-10 : 6.0e-10,
                     state = is_float ? 5.7e-11 : 1.14e-10, lane = is_float ? 4.0e-9 : 6.0e-9,
                     lane_far = is_float ? 9.0e-9 : 1.35e-8;
    if constexpr (std::is_same<Backend, fft::eigen>::value)
        return {gemm, weight, state, is_float ? 0.8e-9 : 1.7e-9, lane, lane_far};
    else
        return {gemm, weight, state, is_float ? 2.6e-11 : 5.2e-11, lane, lane_far};
}

/// Seconds per lane (two transforms of length `length` plus the lane work) for backend B.
template <class S, class Backend>
double toeplitz_fft_lane_seconds(index length)
{
    const auto k = toeplitz_costs<S, Backend>();
    const double l = double(length), bits = std::log2(std::max(l, 2.0));
    const double lane = k.lane * (1.0 + 0.5 * std::max(0.0, bits - 14.0)) + k.lane_far * std::max(0.0, bits - 16.0);
    if constexpr (std::is_same<Backend, fft::eigen>::value) return l * (2.0 * k.fft * kissfft_point_ns(length) + lane);
    else return l * (2.0 * k.fft * 5.0 * bits + lane);
}

/// Seconds of a rectangle of R queries × K keys (all visible) directly (dense) and by FFT.
template <class S, class Backend>
double toeplitz_dense_rectangle_seconds(double rows, double keys, index m, index ex)
{
    const auto k = toeplitz_costs<S, Backend>();
    return rows * keys * (k.gemm * double(m + ex) + k.weight);
}
template <class S, class Backend>
double toeplitz_fft_rectangle_seconds(index rows, index keys, index m, index ex)
{
    // M·Ex real channels in M·Ex/2 complex lanes, two transforms each, plus per-point lane work.
    return std::ceil(double(m) * double(ex) / 2.0) * toeplitz_fft_lane_seconds<S, Backend>(fft_length_for<Backend>(rows + keys - 1));
}

/// \brief The causal FFT algorithm's crossover (toeplitz_mix_fft's direct_rows): the least power of two
/// s >= 16 for which an s × s rectangle costs less by FFT than directly. Rectangles narrower than this,
/// and triangles of fewer than 2s rows, run directly. 2^30 (never) when the FFT does not win below it.
template <class S, class Backend = fft::default_backend>
index toeplitz_fft_direct_rows(index m, index ex)
{
    index s = 16;
    while (s < (index(1) << 30) &&
           toeplitz_fft_rectangle_seconds<S, Backend>(s, s, m, ex) > toeplitz_dense_rectangle_seconds<S, Backend>(double(s), double(s), m, ex))
        s *= 2;
    return s;
}

/// \brief Seconds of the causal dense algorithm for N queries and Nk >= N keys (the first Nk − N visible to
/// every query): those pairs, and a triangle per 128-row block (rows²/2 pairs plus the equivalent of 128
/// per row for its less efficient small GEMMs and row-by-row diagonal tiles: measured 0.15 ms at N = 256,
/// 1.3 ms at 1024, 66 ms at 8192).
template <class S, class Backend>
double toeplitz_causal_dense_seconds(index n, index nk, index m, index ex)
{
    const double dn = double(n), history = double(std::max<index>(nk - n, 0));
    return toeplitz_dense_rectangle_seconds<S, Backend>(dn, std::min(double(nk), history + 0.5 * (dn + 256.0)), m, ex);
}

/// \brief Predicted seconds of the causal FFT algorithm (toeplitz_mix_fft) for N queries, Nk >= N keys:
/// the history rectangle, then the triangle halved while its halves are at least direct_rows wide (one
/// rectangle per node, by FFT), directly below. Exactly the dense prediction when nothing is halved (the
/// algorithm is then the dense one).
template <class S, class Backend = fft::default_backend>
double toeplitz_causal_fft_seconds(index n, index nk, index m, index ex)
{
    const index direct = toeplitz_fft_direct_rows<S, Backend>(m, ex);
    if (n / 2 < direct) return toeplitz_causal_dense_seconds<S, Backend>(n, nk, m, ex);
    const auto rectangle = [&](index rows, index keys) {
        if (rows <= 0 || keys <= 0) return 0.0;
        return std::min(rows, keys) >= direct ? toeplitz_fft_rectangle_seconds<S, Backend>(rows, keys, m, ex)
                                              : toeplitz_dense_rectangle_seconds<S, Backend>(double(rows), double(keys), m, ex);
    };
    // Equal halves at every level: 2^level triangles of rows / 2^level rows (O(log N) evaluations).
    double seconds = rectangle(n, nk - n), count = 1.0;
    index rows = n;
    for (; rows / 2 >= direct; rows /= 2, count *= 2.0) seconds += count * rectangle(rows - rows / 2, rows / 2);
    return seconds + count * toeplitz_causal_dense_seconds<S, Backend>(rows, rows, m, ex);
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
    const double dense = causal ? toeplitz_causal_dense_seconds<S, Backend>(n, std::max(n, nk), m, ex) : dn * dk * pair;
    // fft: one circulant over everything; causal: the divide and conquer of toeplitz_mix_fft.
    const double fft = causal ? toeplitz_causal_fft_seconds<S, Backend>(n, std::max(n, nk), m, ex)
                              : toeplitz_fft_rectangle_seconds<S, Backend>(n, nk, m, ex);
    // banded: a rectangle of R + 2T − 2 keys per row (R + T − 1 when causal) plus the far-state GEMMs
    // (state growth over the keys and Ψ_b S over the queries, once per sweep).
    const double rb = double(banded_block(t_max));
    const double width = std::min(dk, causal ? rb + double(t_max) - 1.0 : rb + 2.0 * double(t_max) - 2.0);
    const double sweeps = causal ? 1.0 : 2.0;
    // The far-state GEMMs run below their full rate while the head fits in L2 (N < 4096, see `state`).
    const double in_cache = std::clamp(0.35 + 0.65 * (std::log2(std::max(dn, 1.0)) - 9.0) / 3.0, 0.35, 1.0);
    const double banded = dn * width * pair + sweeps * (dn + dk) * dm * de * k.state * in_cache;
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
