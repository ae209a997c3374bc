#pragma once
// IWYU pragma: private
/// \file
/// \brief Pieces shared by positional::sine_spe and positional::conv_spe: constraints, scales, the gate.

#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

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

/// The validated setters' check: `values` is (rows, cols) and finite; throws naming `argument` otherwise.
template <class Derived>
void spe_require_parameter(const char* argument, const Eigen::MatrixBase<Derived>& values, index rows, index cols)
{
    if (values.rows() != rows || values.cols() != cols) fail(argument, shape(rows, cols), shape(values.rows(), values.cols()));
    const row_matrix<double> copy = values.template cast<double>(); // contiguous, whatever the expression
    require_all_finite(argument, copy);
}

/// The gate setter of both SPE policies: validates the logits (heads, dim), then stores them and turns the gate on.
template <class Derived, class Gate>
void spe_set_gate(const char* argument, const Eigen::MatrixBase<Derived>& logits, index heads, index dim, Gate& gate, bool& gated)
{
    spe_require_parameter(argument, logits, heads, dim);
    gate = logits.template cast<typename Gate::Scalar>();
    gated = true;
}

/// Shape check of a caller's gradient member or realization matrix: (rows, cols), else linrpe::error naming `argument`.
template <class M>
void spe_require_shape(const char* argument, const M& m, index rows, index cols)
{
    if (m.rows() != rows || m.cols() != cols) fail(argument, shape(rows, cols), shape(m.rows(), m.cols()));
}

/// ∂L/∂a_g of one (head, d) from the two halves of a gated code c = √(1 − g)·c_pos + √g·c_eps: `positional`
/// = ⟨∂L/∂c, c_pos⟩ and `positionless` = ⟨∂L/∂c, c_eps⟩. With g = σ(a): ∂√(1 − g)/∂a = −½ g √(1 − g) and
/// ∂√g/∂a = ½ (1 − g) √g.
inline double spe_gate_gradient(double logit, double positional, double positionless)
{
    const double g = spe_sigmoid(logit), one_minus = spe_sigmoid(-logit);
    return 0.5 * (one_minus * std::sqrt(g) * positionless - g * std::sqrt(one_minus) * positional);
}

/// Positions first .. first + count − 1 must be >= 0 and representable (no int64 overflow of the last one).
inline void spe_check_positions(index first, index count)
{
    if (first < 0) fail("first_position", "a value >= 0", first);
    if (count > 0 && first > std::numeric_limits<index>::max() - (count - 1))
        fail("first_position + rows − 1 (last position)", concat("a value <= ", std::numeric_limits<index>::max()),
             concat(first, " + ", count - 1));
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


/// \brief Scratch space of spe_fill_noise (reused across calls to avoid allocations in the inner loop).
template <class Scalar>
struct spe_noise_scratch {
    std::vector<std::uint32_t> words;
    Eigen::Array<Scalar, Eigen::Dynamic, 1> u1, u2, radius, angle, cosine, sine, interleaved;
};

/// \brief Standard normals first..first+n−1 of the SPE noise `stream`, written to out[0..n−1].
///
/// Normal t comes from Philox block t/4: words (0, 1) give the Box-Muller pair t = 4b, 4b + 1 and words
/// (2, 3) the pair 4b + 2, 4b + 3, each word mapped to the uniform u = (⌊w/2^9⌋ + 1/2)·2^{−23} in (0, 1),
/// exact in float and double. Philox runs 16 counters at a time (philox_stream::blocks) and
/// Box-Muller is evaluated on whole arrays in Scalar with Eigen's vectorized log/sqrt/sin/cos: about ten
/// times faster than philox_stream::fill_normal, which matters because convSPE draws D·R normals per position.
/// Float and double runs see the same uniforms, so their realizations agree to float rounding.
template <class Scalar>
void spe_fill_noise(const random::philox_stream& stream, std::uint64_t first, Scalar* out, index n,
                    spe_noise_scratch<Scalar>& scratch)
{
    if (n <= 0) return;
    const std::uint64_t b0 = first / 4, b1 = (first + static_cast<std::uint64_t>(n) - 1) / 4;
    const index nb = static_cast<index>(b1 - b0 + 1), pairs = 2 * nb;
    scratch.words.resize(static_cast<std::size_t>(4 * nb));
    stream.blocks(b0, nb, scratch.words.data());
    scratch.u1.resize(pairs);
    scratch.u2.resize(pairs);
    // (k + 1/2)·2^{−23} for a 23-bit k has 24 significant bits: exact in float and double, never 0 or 1.
    const Scalar unit = Scalar(1) / Scalar(8388608), half = unit / Scalar(2);
    const std::uint32_t* words = scratch.words.data();
    for (index p = 0; p < pairs; ++p) { // pair p of block p/2 uses words 2(p%2), 2(p%2) + 1 = words[2p], words[2p + 1]
        scratch.u1[p] = static_cast<Scalar>(words[2 * p] >> 9) * unit + half;
        scratch.u2[p] = static_cast<Scalar>(words[2 * p + 1] >> 9) * unit + half;
    }
    // Contiguous array expressions, so that Eigen vectorizes log, sqrt, cos and sin.
    scratch.radius = (Scalar(-2) * scratch.u1.log()).sqrt();                                  // (pairs)
    scratch.angle = scratch.u2 * static_cast<Scalar>(6.283185307179586476925286766559);       // (pairs)
    scratch.cosine = scratch.radius * scratch.angle.cos();                                    // (pairs)
    scratch.sine = scratch.radius * scratch.angle.sin();                                      // (pairs)
    // Normal 4·b0 + 2p is r·cos θ of pair p, 4·b0 + 2p + 1 is r·sin θ.
    scratch.interleaved.resize(2 * pairs);
    for (index p = 0; p < pairs; ++p) {
        scratch.interleaved[2 * p] = scratch.cosine[p];
        scratch.interleaved[2 * p + 1] = scratch.sine[p];
    }
    const index offset = static_cast<index>(first - 4 * b0);
    std::copy(scratch.interleaved.data() + offset, scratch.interleaved.data() + offset + n, out);
}

} // namespace detail
} // namespace linrpe
