#pragma once
// IWYU pragma: private
/// \file
/// \brief Sequence mixing without positional weights: the causal chunk recurrence and its state.
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

#include <Eigen/Core>

#include <algorithm>

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

} // namespace detail
} // namespace linrpe
