#pragma once
// IWYU pragma: private
/// \file
/// \brief Gaussian projection matrices for random-feature maps: iid, or block-orthogonal with chi norms.

#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <Eigen/QR>

#include <cstdint>

namespace linrpe {
namespace detail {

/// (rows, cols) matrix of iid N(0, 1) entries from the (seed, favor_omega, draw) stream, row-major order.
inline row_matrix<double> gaussian_matrix(std::uint64_t seed, std::uint32_t draw, std::uint32_t block, index rows, index cols)
{
    row_matrix<double> g(rows, cols);
    random::philox_stream(seed, random::purpose::favor_omega, draw, block).fill_normal(0, g.data(), g.size());
    return g;
}

/// \brief ω (features, input_dim): rows iid N(0, I), or (orthogonal) stacked blocks of `input_dim`
/// orthonormal rows, each row rescaled by an independent chi(input_dim) norm so that every row is
/// marginally N(0, I) while rows within a block are exactly orthogonal (Choromanski et al., ICLR 2021).
inline row_matrix<double> projection_matrix(std::uint64_t seed, std::uint32_t draw, index features, index input_dim,
                                            bool orthogonal)
{
    if (!orthogonal) return gaussian_matrix(seed, draw, 0, features, input_dim);
    row_matrix<double> omega(features, input_dim);
    const index blocks = (features + input_dim - 1) / input_dim;
    for (index b = 0; b < blocks; ++b) {
        const row_matrix<double> g = gaussian_matrix(seed, draw, static_cast<std::uint32_t>(b + 1), input_dim, input_dim);
        Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
        Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(input_dim, input_dim);
        // Fixing the signs by diag(R) makes Q Haar-distributed rather than biased by the QR convention.
        for (index c = 0; c < input_dim; ++c)
            if (qr.matrixQR()(c, c) < 0) q.col(c) = -q.col(c);
        const index rows = std::min(input_dim, features - b * input_dim);
        const random::philox_stream norms(seed, random::purpose::favor_norms, draw, static_cast<std::uint32_t>(b));
        for (index r = 0; r < rows; ++r) {
            double sq = 0;
            for (index c = 0; c < input_dim; ++c) {
                const double z = norms.normal(static_cast<std::uint64_t>(r * input_dim + c));
                sq += z * z;
            }
            omega.row(b * input_dim + r) = std::sqrt(sq) * q.row(r); // rows of Q are orthonormal too
        }
    }
    return omega;
}

} // namespace detail
} // namespace linrpe
