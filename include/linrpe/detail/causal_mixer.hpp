#pragma once
// IWYU pragma: private
/// \file
/// \brief Causal mixing without positional weights: the state, the chunk recurrence and the segmented kernel.
///
/// The state after tokens j < t is S = Σ_j κ_j v_jᵀ (M, E) and, under `sum`, z = Σ_j κ_j (M). The causal
/// kernel walks chunks of C rows in order (Katharopoulos et al. 2020 in chunked form, docs/design.md §6.2):
///
///     out_c = Ψ_c S + tril(Ψ_c Κ_cᵀ) V_c,   den_c = Ψ_c z + tril(Ψ_c Κ_cᵀ) 1,   S += Κ_cᵀ V_c,   z += Κ_cᵀ 1
///
/// Four (C, M)·(M, C)-sized GEMMs per chunk, all on rows already in cache: 2·N·(2·M·E + C·(M + E)) flops,
/// O(C²) scratch. Only the lower triangle of Ψ_c Κ_cᵀ is kept and S holds earlier chunks only, so row i
/// never uses a later key: outputs up to i are bit-identical whatever (finite) values later tokens hold.

#include "../types.hpp"
#include "mixer_setup.hpp"
#include "parallel.hpp"
#include "../workspace.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <utility>
#include <vector>

namespace linrpe {
namespace detail {

/// Running state of causal linear attention: S (M, E) and z (M); z is empty without a denominator.
template <class S>
struct causal_state {
    row_matrix<S> s;
    vector<S> z;

    bool empty() const { return s.size() == 0; }
    /// Zero state for features of width m and values of width e.
    void reset(index m, index e, bool with_den)
    {
        s = row_matrix<S>::Zero(m, e);
        z = with_den ? vector<S>::Zero(m) : vector<S>();
    }
    /// Adds the contribution of key rows: S += Κᵀ V, z += Κᵀ 1.
    template <class K, class V>
    void add(const K& kappa, const V& v)
    {
        s.noalias() += kappa.transpose() * v; // (M, E)
        if (z.size()) z += kappa.colwise().sum().transpose();
    }
    causal_state& operator+=(const causal_state& other)
    {
        s += other.s;
        if (z.size()) z += other.z;
        return *this;
    }
};

/// \brief Causal chunk recurrence over `psi`, `kappa` (rows, M) and `v` (rows, E), continuing from `state`
/// and leaving it after the last row. Writes the numerator into `num` (rows, E) and, when `den` is
/// non-null, the denominator into `den` (rows). `scores` is (C, C) scratch reused across calls.
template <class S, class Psi, class Kappa, class Values, class Num>
void causal_chunks(const Psi& psi, const Kappa& kappa, const Values& v, Num&& num, vector<S>* den,
                   causal_state<S>& state, index chunk, row_matrix<S>& scores)
{
    const index n = psi.rows();
    if (scores.rows() < chunk || scores.cols() < chunk) scores.resize(chunk, chunk);
    for (index r0 = 0; r0 < n; r0 += chunk) {
        const index rows = std::min(chunk, n - r0);
        const auto psi_c = psi.middleRows(r0, rows);     // (C, M)
        const auto kappa_c = kappa.middleRows(r0, rows); // (C, M)
        const auto v_c = v.middleRows(r0, rows);         // (C, E)
        auto num_c = num.middleRows(r0, rows);           // (C, E)
        auto a = scores.topLeftCorner(rows, rows);       // (C, C)
        a.noalias() = psi_c * kappa_c.transpose();
        a.template triangularView<Eigen::StrictlyUpper>().setZero();
        num_c.noalias() = psi_c * state.s;
        num_c.noalias() += a * v_c;
        if (den) {
            auto den_c = den->segment(r0, rows);
            den_c.noalias() = psi_c * state.z;
            den_c += a.rowwise().sum();
        }
        state.add(kappa_c, v_c);
    }
}

/// \brief Causal mixing without positional weights: the chunk recurrence of causal_chunks over blocks of
/// `fused_block` rows, each encoded just before use so that ψ, κ, V and the state stay in cache.
///
/// With `split` the sequence is cut into segments of about options::segment_rows rows (whole blocks):
///   1. (parallel) Δ_s = Σ_{j in s} κ_j [v_j, 1]ᵀ for every segment but the last
///   2. (in order) S_s = S_{s−1} + Δ_{s−1}, starting from `carried` (the decoder's state) or zero
///   3. (parallel) the recurrence over each segment from S_s
/// which costs 2·M'·E more flops per token of the first segments, plus encoding their keys again: storing κ
/// instead would cost O(N·M') memory. Without `split` (threads busy with other heads) the recurrence runs
/// once over the whole sequence. Extra memory: O(block·(M' + E) + segments·M'·E) either way. When `carried`
/// is given it holds the state after the call on return.
/// Features of a block live in the arena of the thread that runs it (`ws`, see noncausal_forward).
template <class S, class EncodeInto, class Normalize>
void causal_forward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                    const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> out, index first,
                    causal_state<S>* carried, bool split, const mixer_setup& setup, workspace<S>& ws,
                    const EncodeInto& encode, const Normalize& normalize)
{
    const index n = q.rows(), e = v.cols(), chunk = setup.chunk, m = setup.m;
    const bool with_den = setup.with_den;
    const index block = std::max<index>(1, std::min(fused_block, setup.segment_rows) / chunk) * chunk;
    const index segment = split ? std::max<index>(1, setup.segment_rows / block) * block : n;
    const index segments = (n + segment - 1) / segment;
    std::vector<causal_state<S>> start(static_cast<std::size_t>(segments));
    parallel_for(segments - 1, setup.threads, [&](index s) {
        start[s].reset(m, e, with_den);
        scratch_scope<S> tmp(ws.local());
        auto kappa = tmp.matrix(block, m); // (block, M')
        for (index r0 = s * segment; r0 < (s + 1) * segment; r0 += block) {
            encode(k.middleRows(r0, block), role::key, first + r0, kappa, tmp.source());
            start[s].add(kappa, v.middleRows(r0, block));
        }
    });
    causal_state<S> running;
    if (carried && !carried->empty()) running = *carried;
    else running.reset(m, e, with_den);
    for (index s = 0; s + 1 < segments; ++s) {
        start[s].s.swap(running.s); // start[s] = S_s (tokens before segment s); running = Δ_s
        start[s].z.swap(running.z);
        running += start[s];
    }
    start.back() = std::move(running);
    parallel_for(segments, setup.threads, [&](index s) {
        const index s0 = s * segment, srows = std::min(segment, n - s0);
        causal_state<S>& state = start[s];
        row_matrix<S> scores;
        vector<S> den;
        scratch_scope<S> tmp(ws.local());
        auto psi_block = tmp.matrix(block, m);   // (block, M')
        auto kappa_block = tmp.matrix(block, m); // (block, M')
        for (index b0 = 0; b0 < srows; b0 += block) {
            const index r0 = s0 + b0, rows = std::min(block, srows - b0);
            auto psi = psi_block.topRows(rows);
            auto kappa = kappa_block.topRows(rows);
            encode(q.middleRows(r0, rows), role::query, first + r0, psi, tmp.source());
            encode(k.middleRows(r0, rows), role::key, first + r0, kappa, tmp.source());
            Eigen::Ref<row_matrix<S>> o = out.middleRows(r0, rows);
            if (with_den) den.resize(rows);
            causal_chunks<S>(psi, kappa, v.middleRows(r0, rows), o, with_den ? &den : nullptr, state, chunk, scores);
            normalize(o, with_den ? &den : nullptr);
        }
    });
    if (carried) *carried = std::move(start.back());
}

} // namespace detail
} // namespace linrpe
