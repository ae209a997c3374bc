#pragma once
// A test encoding that learns a positive gain per head and channel, s (H, C): queries x ⊙ s_h, keys x ⊙ s_h²,
// applied before the feature map (C = D) or after it (C = M). Its gradient is known in closed form, so it
// runs the parameter-gradient plumbing (per-block buffers, batch order, accumulation, shapes) without
// depending on any shipped family.
#include <linrpe/errors.hpp>
#include <linrpe/types.hpp>

#include <Eigen/Core>

namespace test {

enum class stage { pre_feature, post_feature };

template <stage Where>
struct learned_gain {
    using scalar_type = double;
    static constexpr bool has_pre_feature = Where == stage::pre_feature;
    static constexpr bool has_post_feature = Where == stage::post_feature;
    static constexpr bool has_mixing = false;
    struct parameter_gradients {
        linrpe::row_matrix<double> gain; // (H, C)
    };
    linrpe::row_matrix<double> s; // (H, C), positive

    bool preserves_positivity(linrpe::index) const { return true; }
    linrpe::index pre_output_dim(linrpe::index input_dim) const { return input_dim; }
    linrpe::index post_output_dim(linrpe::index feature_dim) const { return feature_dim; }

    template <class S>
    void encode_pre(const Eigen::Ref<const linrpe::row_matrix<S>>& x, Eigen::Ref<linrpe::row_matrix<S>> out, linrpe::index,
                    linrpe::index head, linrpe::role which) const
    {
        scale(x, out, head, which);
    }
    template <class S>
    void encode_post(const Eigen::Ref<const linrpe::row_matrix<S>>& phi, Eigen::Ref<linrpe::row_matrix<S>> out, linrpe::index,
                     linrpe::index head, linrpe::role which) const
    {
        scale(phi, out, head, which);
    }
    template <class S>
    void encode_pre_backward(const Eigen::Ref<const linrpe::row_matrix<S>>& x, const Eigen::Ref<const linrpe::row_matrix<S>>& du,
                             Eigen::Ref<linrpe::row_matrix<S>> dx, linrpe::index, linrpe::index head, linrpe::role which,
                             double* grad) const
    {
        scale_backward(x, du, dx, head, which, grad);
    }
    template <class S>
    void encode_post_backward(const Eigen::Ref<const linrpe::row_matrix<S>>& phi, const Eigen::Ref<const linrpe::row_matrix<S>>& dpsi,
                              Eigen::Ref<linrpe::row_matrix<S>> dphi, linrpe::index, linrpe::index head, linrpe::role which,
                              double* grad) const
    {
        scale_backward(phi, dpsi, dphi, head, which, grad);
    }

    parameter_gradients make_parameter_gradients() const { return {linrpe::row_matrix<double>::Zero(s.rows(), s.cols())}; }
    linrpe::index gradient_size() const { return s.cols(); }
    void add_gradients(linrpe::index head, const double* flat, parameter_gradients& pg) const
    {
        pg.gain.row(head) += Eigen::Map<const Eigen::RowVectorXd>(flat, s.cols());
    }
    void validate_gradients(const parameter_gradients& pg) const
    {
        if (pg.gain.rows() != s.rows() || pg.gain.cols() != s.cols())
            linrpe::detail::fail("parameter_gradients.gain shape", linrpe::detail::shape(s.rows(), s.cols()),
                                 linrpe::detail::shape(pg.gain.rows(), pg.gain.cols()));
    }

private:
    Eigen::RowVectorXd factor(linrpe::index head, linrpe::role which) const
    {
        return which == linrpe::role::query ? Eigen::RowVectorXd(s.row(head)) : Eigen::RowVectorXd(s.row(head).array().square());
    }
    template <class S>
    void scale(const Eigen::Ref<const linrpe::row_matrix<S>>& x, Eigen::Ref<linrpe::row_matrix<S>> out, linrpe::index head,
               linrpe::role which) const
    {
        const Eigen::Matrix<S, 1, Eigen::Dynamic> w = factor(head, which).template cast<S>();
        out = x.array().rowwise() * w.array();
    }
    // dx = dy ⊙ w; ∂/∂s_c of Σ dy ⊙ x ⊙ s (queries) is Σ_i dy_ic x_ic, of Σ dy ⊙ x ⊙ s² (keys) 2 s_c Σ_i dy_ic x_ic.
    template <class S>
    void scale_backward(const Eigen::Ref<const linrpe::row_matrix<S>>& x, const Eigen::Ref<const linrpe::row_matrix<S>>& dy,
                        Eigen::Ref<linrpe::row_matrix<S>> dx, linrpe::index head, linrpe::role which, double* grad) const
    {
        const Eigen::Matrix<S, 1, Eigen::Dynamic> w = factor(head, which).template cast<S>();
        dx = dy.array().rowwise() * w.array();
        if (!grad) return;
        const Eigen::RowVectorXd per = (x.template cast<double>().array() * dy.template cast<double>().array()).colwise().sum();
        Eigen::Map<Eigen::RowVectorXd> g(grad, s.cols());
        g.array() += which == linrpe::role::query ? per.array() : (2.0 * s.row(head).array() * per.array()).eval();
    }
};

} // namespace test
