#pragma once
// Helpers of the SPE tests: deterministic inputs and error measures.
#include "scalars.hpp"
#include <linrpe/random/philox_stream.hpp>
#include <linrpe/types.hpp>

#include <cmath>
#include <cstdint>

namespace spe_test {
using linrpe::index;
using linrpe::row_matrix;

/// (rows, cols) of iid N(0, scale²) from a user-purpose stream keyed by `seed` (tests only).
template <class S>
row_matrix<S> gaussian(index rows, index cols, std::uint64_t seed, double scale = 1.0)
{
    row_matrix<double> g(rows, cols);
    linrpe::random::philox_stream(seed, linrpe::random::purpose::user, 77).fill_normal(0, g.data(), g.size());
    return (g * scale).template cast<S>();
}

/// ‖a − b‖_F / ‖b‖_F in double.
template <class A, class B>
double rel_frobenius(const A& a, const B& b)
{
    return (a.template cast<double>() - b.template cast<double>()).norm() / b.template cast<double>().norm();
}

/// Exact variance of q̂·k̂/√R for one (q, k) pair (reference/spe.md §7.2, Isserlis):
/// (1/(R·D)) [(Σ_d q_d² σ_Q,d²)(Σ_d k_d² σ_K,d²) + (Σ_d q_d k_d P_d)²].
template <class Spe, class V>
double exact_variance(const Spe& spe, index head, const V& q, const V& k, index delta)
{
    double sq = 0, sk = 0, cross = 0;
    const index dim = q.size();
    for (index d = 0; d < dim; ++d) {
        sq += double(q[d]) * double(q[d]) * spe.code_variance(head, d, linrpe::role::query);
        sk += double(k[d]) * double(k[d]) * spe.code_variance(head, d, linrpe::role::key);
        cross += double(q[d]) * double(k[d]) * spe.expected_kernel(head, d, delta);
    }
    return (sq * sk + cross * cross) / (double(spe.realizations()) * double(dim));
}

/// (1/√D) Σ_d q_d k_d P_d(δ): the expected logit.
template <class Spe, class V>
double expected_logit(const Spe& spe, index head, const V& q, const V& k, index delta)
{
    double s = 0;
    for (index d = 0; d < q.size(); ++d) s += double(q[d]) * double(k[d]) * spe.expected_kernel(head, d, delta);
    return s / std::sqrt(double(q.size()));
}
} // namespace spe_test
