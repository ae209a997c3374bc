#pragma once
// IWYU pragma: private
/// \file
/// \brief Toeplitz mixing by the banded algorithm, fused by segments of query rows.

#include "../types.hpp"
#include "mixer_setup.hpp"
#include "parallel.hpp"
#include "relative_weights.hpp"
#include "toeplitz_banded.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <vector>

namespace linrpe {
namespace detail {

/// \brief Banded Toeplitz mixing fused by segments of options::segment_rows query rows, so that the
/// features of a segment and of its key window stay in cache (and are never materialized for the whole
/// sequence).
///
/// Segment s covers rows [s0, s1) and the key window [A_s, B_s), the union of its blocks' rectangles
/// (banded_rectangle); the far keys enter as the states
///     behind_s = Σ_{j < A_s} κ_j vx_jᵀ,   ahead_s = Σ_{j >= B_s} κ_j vx_jᵀ (non-causal only)
/// built from increments over [A_{s−1}, A_s) and [B_s, B_{s+1}). With `parallel` the segments run in
/// parallel (each increment re-encodes its keys); otherwise in order, behind_s carried from the previous
/// window. Either choice depends on the shape only. O(N·(T_max·(M' + Ex) + M'·Ex)) time, extra memory
/// O(segment·(M' + Ex) + segments·M'·Ex).
template <class S, class Encode, class Normalize>
void toeplitz_segments_forward(const Eigen::Ref<const row_matrix<S>>& q, const Eigen::Ref<const row_matrix<S>>& k,
                               const Eigen::Ref<const row_matrix<S>>& v, Eigen::Ref<row_matrix<S>> out, index q_first,
                               index k_first, const relative_weights<S>& w, bool causal, bool parallel,
                               const mixer_setup& setup, const Encode& encode, const Normalize& normalize)
{
    using matrix = row_matrix<S>;
    const index n = q.rows(), nk = k.rows(), e = v.cols(), delta = k_first - q_first;
    const bool with_den = setup.with_den;
    const index m = setup.m, ex = e + (with_den ? 1 : 0);
    const index rb = banded_block(w.t_max);
    // At most n: a larger segment is the same single segment, and (n + segment − 1) must not overflow.
    const index segment = std::min(n, std::max<index>(1, setup.segment_rows / rb) * rb);
    const index segments = (n + segment - 1) / segment;
    parallel = parallel && segments > 1;
    std::vector<index> a(static_cast<std::size_t>(segments + 1)), b(a.size());
    for (index s = 0; s < segments; ++s) {
        const index last = std::min(n, (s + 1) * segment) - 1, last0 = last / rb * rb;
        a[s] = banded_rectangle(s * segment, rb, delta, w.t_max, nk, causal).first;
        b[s] = banded_rectangle(last0, last - last0 + 1, delta, w.t_max, nk, causal).second;
    }
    b[segments] = nk;
    // [vx] rows of V with the ones column of the denominator: (rows, Ex)
    const auto values = [&](index j0, index rows) {
        matrix vx(rows, ex);
        vx.leftCols(e) = v.middleRows(j0, rows);
        if (with_den) vx.col(e).setOnes();
        return vx;
    };
    // Σ κ_j vx_jᵀ over keys [j0, j1), encoded in blocks of fused_block rows: (M', Ex)
    const auto key_state = [&](index j0, index j1) {
        matrix st = matrix::Zero(m, ex);
        for (index r0 = j0; r0 < j1; r0 += fused_block) {
            const index rows = std::min(fused_block, j1 - r0);
            const matrix kappa = encode(k.middleRows(r0, rows), role::key, k_first + r0); // (rows, M')
            st.noalias() += kappa.transpose() * values(r0, rows);
        }
        return st;
    };
    std::vector<matrix> behind(static_cast<std::size_t>(segments)), ahead(behind.size());
    if (parallel) {
        parallel_for(segments, setup.threads, [&](index s) { behind[s] = key_state(s ? a[s - 1] : 0, a[s]); });
        for (index s = 1; s < segments; ++s) behind[s] += behind[s - 1];
    } else {
        behind[0] = key_state(0, a[0]);
    }
    if (!causal) {
        parallel_for(segments, setup.threads, [&](index s) { ahead[s] = key_state(b[s], b[s + 1]); });
        for (index s = segments - 1; s-- > 0;) ahead[s] += ahead[s + 1];
    }
    const auto run_segment = [&](index s) {
        const index s0 = s * segment, rows = std::min(segment, n - s0), keys = b[s] - a[s];
        const matrix psi = encode(q.middleRows(s0, rows), role::query, q_first + s0);   // (rows, M')
        const matrix kappa = encode(k.middleRows(a[s], keys), role::key, k_first + a[s]); // (keys, M')
        const matrix vx = values(a[s], keys);                                           // (keys, Ex)
        matrix num(rows, ex);
        toeplitz_mix_banded<S>(w, psi, kappa, vx, num, q_first + s0, k_first + a[s], causal, rb, &behind[s],
                               causal ? nullptr : &ahead[s]);
        if (!parallel && s + 1 < segments) { // behind_{s+1} = behind_s + the keys [A_s, A_{s+1}) of this window
            behind[s + 1] = behind[s];
            behind[s + 1].noalias() += kappa.topRows(a[s + 1] - a[s]).transpose() * vx.topRows(a[s + 1] - a[s]);
        }
        Eigen::Ref<matrix> o = out.middleRows(s0, rows);
        o = num.leftCols(e);
        vector<S> den = with_den ? vector<S>(num.col(e)) : vector<S>();
        normalize(o, with_den ? &den : nullptr);
    };
    if (parallel) parallel_for(segments, setup.threads, run_segment);
    else
        for (index s = 0; s < segments; ++s) run_segment(s);
}

} // namespace detail
} // namespace linrpe
