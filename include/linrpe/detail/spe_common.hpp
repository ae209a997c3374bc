#pragma once
// IWYU pragma: private
/// \file
/// \brief Pieces shared by positional::sine_spe and positional::conv_spe: constraints, scales, the gate.

#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <cmath>
#include <cstdint>

namespace linrpe {
namespace detail {

/// σ(x) = 1/(1 + e^{−x}), written so that neither branch overflows.
inline double spe_sigmoid(double x)
{
    if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
    const double e = std::exp(x);
    return e / (1.0 + e);
}

/// softplus(x) = ln(1 + e^x), exact to double rounding and finite for every finite x.
inline double spe_softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

/// (R·D)^{−1/4}: the factor on every code (and on the gate noise), so that the product of a query code and a
/// key code carries √(R/D) and the feature map's own R^{−1/2} temperature leaves 1/√D (Liutkus et al. 2021).
inline double spe_code_scale(index realizations, index dim)
{
    return std::pow(static_cast<double>(realizations) * static_cast<double>(dim), -0.25);
}

/// Ids of the parameter tensors in the spe_parameters stream (the `a` word), one per tensor and family.
enum class spe_tensor : std::uint32_t { sine_freqs = 1, sine_offsets = 2, sine_gains = 3, conv_query = 4, conv_key = 5, gate = 6 };

/// The stream of initial values of one tensor of one head.
inline random::philox_stream spe_parameter_stream(std::uint64_t seed, spe_tensor tensor, index head)
{
    return random::philox_stream(seed, random::purpose::spe_parameters, 0, static_cast<std::uint32_t>(tensor),
                                 static_cast<std::uint32_t>(head));
}

/// ε (H·D, R), iid N(0, 1) from the spe_gate stream: row h·D + d is (head h, dimension d), shared by
/// queries and keys and by every position.
template <class Scalar>
row_matrix<Scalar> spe_gate_noise(std::uint64_t seed, index heads, index dim, index realizations)
{
    row_matrix<Scalar> eps(heads * dim, realizations);
    for (index h = 0; h < heads; ++h)
        for (index d = 0; d < dim; ++d)
            random::philox_stream(seed, random::purpose::spe_gate, static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(d))
                .fill_normal(0, eps.row(h * dim + d).data(), realizations);
    return eps;
}

/// Checks shared by both SPE policies: the input width, the head index and the gate of that head.
template <class Gate>
void spe_check_common(const char* family, index input_dim, index dim, index head, index heads, bool gated, const Gate& gate)
{
    if (input_dim != dim) fail(concat(family, " input_dim (query/key width D)").c_str(), dim, input_dim);
    if (head < 0 || head >= heads) fail("head", concat("a head index in [0, ", heads, ") of ", family), head);
    if (gated) {
        if (gate.rows() != heads || gate.cols() != dim)
            fail(concat(family, " gate shape").c_str(), shape(heads, dim), shape(gate.rows(), gate.cols()));
        require_all_finite(concat(family, " gate").c_str(), gate.row(head));
    }
}

/// (1 − g, g) of (head, dim): the gate's weights on the positional and positionless kernels.
template <class Gate>
void spe_gate_weights(bool gated, const Gate& gate, index head, index d, double& positional, double& positionless)
{
    if (!gated) {
        positional = 1.0;
        positionless = 0.0;
        return;
    }
    // 1 − σ(a) = σ(−a): no cancellation when g is close to 1.
    const double a = static_cast<double>(gate(head, d));
    positional = spe_sigmoid(-a);
    positionless = spe_sigmoid(a);
}

} // namespace detail
} // namespace linrpe
