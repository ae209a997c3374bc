#pragma once
// Shared helpers of the Toeplitz RPE tests: seeded inputs, explicit Toeplitz matrices, errors.
#include "scalars.hpp"
#include <linrpe/detail/relative_weights.hpp>
#include <linrpe/types.hpp>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace toeplitz_test {
using linrpe::index;
using linrpe::row_matrix;

/// Uniform [lo, hi) values from a fixed seed (std::mt19937_64 is specified exactly by the standard).
template <class S>
row_matrix<S> uniform(index rows, index cols, std::uint64_t seed, double lo = -1.0, double hi = 1.0)
{
    std::mt19937_64 gen(seed);
    row_matrix<S> m(rows, cols);
    for (index i = 0; i < m.size(); ++i)
        m.data()[i] = static_cast<S>(lo + (hi - lo) * (static_cast<double>(gen() >> 11) * 0x1.0p-53));
    return m;
}

/// Weights c for offsets |t| < t_max, uniform in [lo, hi).
template <class S>
linrpe::detail::relative_weights<S> random_weights(index t_max, std::uint64_t seed, double lo = 0.1, double hi = 2.0)
{
    linrpe::detail::relative_weights<S> w;
    w.t_max = t_max;
    w.c = uniform<S>(2 * t_max - 1, 1, seed, lo, hi);
    return w;
}

/// The explicit N × Nk matrix C_ij = w(j − i + delta) (0 for t > 0 when causal), in double.
template <class S>
row_matrix<double> explicit_toeplitz(const linrpe::detail::relative_weights<S>& w, index n, index nk, index delta, bool causal)
{
    row_matrix<double> c(n, nk);
    for (index i = 0; i < n; ++i)
        for (index j = 0; j < nk; ++j) {
            const index t = j - i + delta;
            c(i, j) = (causal && t > 0) ? 0.0 : static_cast<double>(w.at(t));
        }
    return c;
}

/// ‖a − b‖_F / ‖b‖_F (‖a‖_F when b = 0).
template <class A, class B>
double rel_err(const A& a, const B& b)
{
    const row_matrix<double> ad = a.template cast<double>(), bd = b.template cast<double>();
    const double ref = bd.norm();
    return ref > 0 ? (ad - bd).norm() / ref : ad.norm();
}

template <class S>
constexpr double eps()
{
    return static_cast<double>(std::numeric_limits<S>::epsilon());
}

/// Values a future token may hold: none of them may change an earlier output by one bit.
template <class S>
std::vector<S> poisons()
{
    return {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(), -std::numeric_limits<S>::infinity(),
            S(1e30), S(-1e30), S(1e6)};
}

/// Runs `run(q, k, v)` (rows are tokens) on seeded inputs and again with the rows after t of q, of k, of v
/// and of all three set to each poison; rows <= t of the outputs must be equal byte for byte. Returns the
/// number of comparisons (so that callers can require the sweep ran).
template <class S, class Run>
int check_no_leak(const Run& run, index n, index dq, index dv, index t)
{
    const row_matrix<S> q = uniform<S>(n, dq, 31), k = uniform<S>(n, dq, 32), v = uniform<S>(n, dv, 33);
    const row_matrix<S> base = run(q, k, v), past = base.topRows(t + 1);
    REQUIRE(past.allFinite()); // a NaN past would compare unequal to itself and hide nothing
    int compared = 0;
    for (const S poison : poisons<S>())
        for (int which = 0; which < 4; ++which) { // 0: q, 1: k, 2: v, 3: all three
            row_matrix<S> q2 = q, k2 = k, v2 = v;
            if (which == 0 || which == 3) q2.bottomRows(n - t - 1).setConstant(poison);
            if (which == 1 || which == 3) k2.bottomRows(n - t - 1).setConstant(poison);
            if (which == 2 || which == 3) v2.bottomRows(n - t - 1).setConstant(poison);
            const row_matrix<S> out = run(q2, k2, v2), out_past = out.topRows(t + 1);
            CAPTURE(double(poison), which, t);
            CHECK(std::memcmp(out_past.data(), past.data(), sizeof(S) * std::size_t(past.size())) == 0);
            ++compared;
        }
    return compared;
}

} // namespace toeplitz_test
