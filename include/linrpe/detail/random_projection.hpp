#pragma once
// IWYU pragma: private
/// \file
/// \brief Gaussian projection matrices for random-feature maps: iid, or block-orthogonal with chi norms.

#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <Eigen/QR>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

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

/// \brief The ω of a random-feature map: one (features, input_dim) draw shared by every head, or one per head.
///
/// Owns the bounds and shape checks of feature_maps::favor and feature_maps::trig_features: the matrices
/// are reachable by reference (trained or external projections can be loaded), so they are validated both
/// on set and before every call.
class projection_set {
public:
    projection_set(const char* owner, index features, index input_dim, index draws)
        : m_owner(owner), m_features(features), m_input_dim(input_dim), m_omega(static_cast<std::size_t>(std::max<index>(draws, 0))) // the owner refuses draws < 1
    {
    }

    void redraw(std::uint64_t seed, bool orthogonal)
    {
        for (std::size_t h = 0; h < m_omega.size(); ++h)
            m_omega[h] = projection_matrix(seed, static_cast<std::uint32_t>(h), m_features, m_input_dim, orthogonal);
    }
    index draws() const { return static_cast<index>(m_omega.size()); }

    /// ω used by `head`: the shared draw for any head >= 0, or draw `head` of [0, draws()).
    row_matrix<double>& at(index head) { return m_omega[draw_of(head)]; }
    const row_matrix<double>& at(index head) const { return m_omega[draw_of(head)]; }

    /// Replaces ω of `head` (the shared one when there is a single draw) after checking shape and finiteness.
    void set(index head, const row_matrix<double>& omega)
    {
        const std::size_t h = draw_of(head);
        check_matrix(omega);
        m_omega[h] = omega;
    }

    /// Before a call for `head`: the head is in range and its ω has the right shape and finite entries.
    void check(index head) const { check_matrix(m_omega[draw_of(head)]); }

private:
    std::size_t draw_of(index head) const
    {
        if (head < 0 || (m_omega.size() > 1 && head >= draws()))
            fail("head", concat(m_omega.size() > 1 ? concat("a head index in [0, ", draws(), ")") : std::string("a head index >= 0"),
                                " of ", m_owner),
                 head);
        return m_omega.size() == 1 ? 0 : static_cast<std::size_t>(head);
    }
    void check_matrix(const row_matrix<double>& omega) const
    {
        if (omega.rows() != m_features || omega.cols() != m_input_dim)
            fail(concat(m_owner, " projection (features, input_dim)").c_str(), shape(m_features, m_input_dim),
                 shape(omega.rows(), omega.cols()));
        require_all_finite(concat(m_owner, " projection").c_str(), omega);
    }

    const char* m_owner;
    index m_features, m_input_dim;
    std::vector<row_matrix<double>> m_omega;
};

} // namespace detail
} // namespace linrpe
