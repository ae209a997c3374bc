// Plugging your own feature map and positional encoding into the core: two plain classes, no base class.
// The core checks them at compile time (a missing member fails a static_assert that names it), and the
// result is verified here against the exact reference built from the same ψ, κ.
#include <linrpe.hpp>

#include <cstdio>

namespace my {
using linrpe::index;
using linrpe::row_matrix;

/// φ(x) = relu(x)² + 1e-3: non-negative, so `sum` normalization is allowed.
struct squared_relu {
    static constexpr bool is_positive = true;
    index output_dim(index input_dim) const { return input_dim; }
    template <class S>
    void apply(const Eigen::Ref<const row_matrix<S>>& x, Eigen::Ref<row_matrix<S>> phi, const linrpe::feature_context&) const
    {
        phi = (x.array().max(S(0)).square() + S(1e-3)).matrix();
    }
};

/// A post-feature encoding T(x, s) = (−1)^s x: unitary, and ⟨T(q, s), T(k, t)⟩ = (−1)^{t−s} ⟨q, k⟩ depends
/// only on t − s (LRPE with every angle π). Scores change sign, so it refuses `sum` normalization.
struct alternating {
    using scalar_type = float;
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = true;
    static constexpr bool has_mixing = false;
    bool preserves_positivity(index max_offset) const { return max_offset == 0; }
    index post_output_dim(index feature_dim) const { return feature_dim; }
    template <class S>
    void encode_post(const Eigen::Ref<const row_matrix<S>>& phi, Eigen::Ref<row_matrix<S>> out, index first_position,
                     index /*head*/, linrpe::role) const
    {
        for (index i = 0; i < phi.rows(); ++i) out.row(i) = ((first_position + i) % 2 ? S(-1) : S(1)) * phi.row(i);
    }
};
} // namespace my

int main()
{
    linrpe::options<float> opt;
    opt.mask = linrpe::masking::causal;
    opt.norm = linrpe::normalization::rms;
    const linrpe::linear_attention<my::squared_relu, my::alternating, float> attn({}, {}, opt);
    const linrpe::row_matrix<float> q = linrpe::row_matrix<float>::Random(300, 16), k = linrpe::row_matrix<float>::Random(300, 16),
                                    v = linrpe::row_matrix<float>::Random(300, 8);
    const linrpe::row_matrix<float> out = attn(q, k, v, /*head=*/0, /*first_position=*/41);
    const auto ref = linrpe::reference::kernel_attention(attn.features(q, linrpe::role::query, 0, 41),
                                                         attn.features(k, linrpe::role::key, 0, 41), v,
                                                         attn.mixing_matrix(300, 300, 0, 41, 41), opt.norm, opt.eps);
    const double err = (out.cast<double>() - ref).norm() / ref.norm();
    std::printf("custom feature map + custom positional encoding: relative error vs exact reference %.2e\n", err);
    // float, N = 300, M = 16: rounding ~ (N + M)·2^-24 ≈ 2e-5 at worst; a wrong encoding gives O(1).
    return err < 1e-4 ? 0 : 1;
}
