#pragma once
// Helpers of the LRPE tests: configurations, seeded inputs, and an independent construction of P.
#include "scalars.hpp"
#include <linrpe/errors.hpp>
#include <linrpe/positional/lrpe.hpp>

#include <Eigen/Core>

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace lrpe_test {
using linrpe::index;
using linrpe::lrpe_basis;
using linrpe::lrpe_kind;
using linrpe::lrpe_layout;
using linrpe::row_matrix;

/// One point of the kind × layout × fraction × P grid.
struct config {
    lrpe_kind kind;
    lrpe_layout layout;
    double fraction;
    lrpe_basis basis;
    bool learned_householder;

    std::string name() const
    {
        const char* k[] = {"rotate", "cosine", "permutation"};
        const char* b[] = {"I", "householder", "odd_even", "dct"};
        std::string s = k[int(kind)];
        if (kind == lrpe_kind::rotate)
            s += std::string(layout == lrpe_layout::interleaved ? "/interleaved" : "/half_split") + "/f=" + std::to_string(fraction);
        s += std::string("/P=") + b[int(basis)];
        if (learned_householder) s += "(learned)";
        return s;
    }
};

inline std::vector<config> all_configs()
{
    std::vector<config> out;
    const lrpe_basis bases[] = {lrpe_basis::identity, lrpe_basis::householder, lrpe_basis::odd_even, lrpe_basis::dct};
    for (lrpe_basis b : bases)
        for (bool learned : {false, true}) {
            if (learned && b != lrpe_basis::householder) continue;
            for (lrpe_layout l : {lrpe_layout::interleaved, lrpe_layout::half_split})
                for (double f : {1.0, 0.5}) out.push_back({lrpe_kind::rotate, l, f, b, learned});
            out.push_back({lrpe_kind::cosine, lrpe_layout::interleaved, 1.0, b, learned});
            out.push_back({lrpe_kind::permutation, lrpe_layout::interleaved, 1.0, b, learned});
        }
    return out;
}

/// Uniform [-1, 1] matrix from a fixed seed (std::mt19937 is specified bit-exactly by the standard).
template <class S>
row_matrix<S> uniform(index rows, index cols, unsigned seed, double lo = -1.0, double hi = 1.0)
{
    std::mt19937 gen(seed);
    row_matrix<S> m(rows, cols);
    for (index i = 0; i < m.size(); ++i)
        m.data()[i] = static_cast<S>(lo + (hi - lo) * (double(gen()) / 4294967296.0));
    return m;
}

/// Builds the encoding of a configuration; learned Householder vectors get a non-unit norm on purpose.
template <class S>
linrpe::positional::lrpe<S> make(const config& c, index dim, index heads = 1, std::uint64_t seed = 7)
{
    linrpe::lrpe_options opt;
    opt.layout = c.layout;
    opt.rotate_fraction = c.fraction;
    opt.basis = c.basis;
    opt.seed = seed;
    linrpe::positional::lrpe<S> pe(c.kind, dim, heads, opt);
    if (c.learned_householder) pe.set_householder(uniform<double>(heads, dim, 99, 0.5, 2.0), /*learned=*/true);
    return pe;
}

/// P of `head` built from its definition (not from the encoder): (M, M), in double.
template <class S>
row_matrix<double> basis_matrix(const linrpe::positional::lrpe<S>& pe, index head)
{
    const index m = pe.dim();
    row_matrix<double> p = row_matrix<double>::Identity(m, m);
    switch (pe.basis()) {
    case lrpe_basis::identity: break;
    case lrpe_basis::householder: {
        Eigen::VectorXd v = pe.householder.row(head).transpose();
        if (pe.householder_learned) v /= v.norm() + 1e-6;
        p -= 2.0 * v * v.transpose();
        break;
    }
    case lrpe_basis::odd_even: // (P x)_{2k} = x_k, (P x)_{2k+1} = x_{k+ceil(M/2)}
        p.setZero();
        for (index k = 0; 2 * k < m; ++k) p(2 * k, k) = 1.0;
        for (index k = 0; 2 * k + 1 < m; ++k) p(2 * k + 1, k + (m + 1) / 2) = 1.0;
        break;
    case lrpe_basis::dct:
        for (index k = 0; k < m; ++k)
            for (index n = 0; n < m; ++n)
                p(k, n) = std::sqrt(2.0 / m) * (k == 0 ? 1.0 / std::sqrt(2.0) : 1.0) * std::cos(M_PI * (2 * n + 1) * k / (2.0 * m));
        break;
    }
    return p;
}

template <class S>
constexpr double eps() { return double(std::numeric_limits<S>::epsilon()); }

} // namespace lrpe_test
