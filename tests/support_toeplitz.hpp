#pragma once
// Shared helpers of the Toeplitz RPE tests: seeded inputs, explicit Toeplitz matrices, errors.
#include <linrpe/detail/relative_weights.hpp>
#include <linrpe/types.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

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

} // namespace toeplitz_test
