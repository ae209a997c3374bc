#pragma once
/// \file
/// \brief Matrix aliases, the enums that select a configuration, and linrpe::options.

#include <Eigen/Core>

#include <cstdint>

namespace linrpe {

using index = Eigen::Index;

/// \brief Bound on absolute positions: every query and key position p of a call satisfies 0 <= p < 2^53.
///
/// Why 2^53: positions enter the encodings as doubles (LRPE angles p·θ, SPE phases f·p), exact only below
/// 2^53; and first + N, differences of positions and the offset tables then never overflow `index`. Calls
/// whose first position + length exceed it throw linrpe::error naming the position argument.
inline constexpr index max_position = index(1) << 53;

/// Row-major dynamic matrix: rows are tokens, columns are channels (the layout of every (N, D) argument).
template <class Scalar>
using row_matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Column vector of Scalar.
template <class Scalar>
using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Which keys a query sees: all of them, or those at positions <= its own (mixing weight 1[j <= i]).
enum class masking { none, causal };

/// How the weighted sum of values is normalized (docs/design.md §2).
enum class normalization {
    sum,  ///< out_i = num_i / (den_i + eps): the kernel-attention normalizer; needs non-negative scores
    none, ///< out_i = num_i
    rms,  ///< out_i = num_i / sqrt(mean_e num_ie^2 + eps): parameter-free, valid for signed scores
};

/// Whether a row block being encoded holds queries or keys (encodings may treat them differently).
enum class role { query, key };

/// Algorithm for Toeplitz (relative-weight) sequence mixing; `automatic` picks by a cost model.
enum class toeplitz_algorithm { automatic, dense, fft, banded };

/// \brief Run-time options of linrpe::linear_attention.
///
/// C++17 has no designated initializers: default-construct, then set fields.
template <class Scalar>
struct options {
    masking mask = masking::none;
    normalization norm = normalization::sum;
    /// Added to the denominator (sum) or to the mean square (rms); must be finite and > 0.
    Scalar eps = Scalar(1e-6);
    /// Rows per chunk of the causal chunked GEMM form, in [1, max_chunk_size]; any such value gives the same
    /// result to rounding. A call uses min(chunk_size, N) (its scratch is O(chunk²)).
    index chunk_size = 32;
    /// Largest accepted chunk_size: (C, C) scratch of 4096² doubles is already 128 MiB.
    static constexpr index max_chunk_size = 4096;
    /// Rows per segment of a long head (rounded to whole blocks): causal heads in calls of fewer than 8
    /// sequences run their segments in parallel, Toeplitz banded mixing always works segment by segment
    /// (features of one segment and its key window stay in cache). Like chunk_size, any value >= 1 gives
    /// the same result to rounding; the thread count never changes it. Values beyond N act as N.
    index segment_rows = 4096;
    /// Accept `sum` normalization for scores that can be negative (e.g. trig_features, as Performer does).
    bool allow_signed_normalizer = false;
    /// Forces a Toeplitz mixing algorithm; ignored by encodings without sequence mixing.
    toeplitz_algorithm toeplitz = toeplitz_algorithm::automatic;
    /// OpenMP threads for the batched API; 0 uses the OpenMP default. Results do not depend on it.
    int threads = 0;
};

/// \brief What a feature map is told about the rows it maps.
struct feature_context {
    role which = role::query;
    index head = 0;
    /// True when a positive per-row factor on query features cancels (normalization::sum).
    bool row_scale_cancels = false;
};

/// \brief The parameter gradients of an encoding that learns nothing (positional::none, custom encodings
/// without parameters): an empty value, so that backward(..., &pg) reads the same for every encoding.
struct no_parameters {
    no_parameters& operator+=(const no_parameters&) { return *this; }
};

} // namespace linrpe
