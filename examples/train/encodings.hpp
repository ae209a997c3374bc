#pragma once
// The trainer's adapters (train::encoding_parameters) for linrpe's learnable positional encodings: LRPE
// (learned θ), sineSPE, convSPE, Toeplitz RPE and compose<A, B>, over the families' parameter_gradients.
// Used by examples/train_lag.cpp (every family) and tests/test_train.cpp (Toeplitz RPE and LRPE in the
// whole-model gradient check).
#include "model.hpp"

#include <linrpe/positional/compose.hpp>
#include <linrpe/positional/conv_spe.hpp>
#include <linrpe/positional/lrpe.hpp>
#include <linrpe/positional/sine_spe.hpp>
#include <linrpe/positional/toeplitz_rpe.hpp>

namespace train {

/// LRPE: θ (H, theta_count()) when it holds explicit values (set_theta), else nothing.
template <class S>
struct encoding_parameters<linrpe::positional::lrpe<S>> {
    using pe = linrpe::positional::lrpe<S>;
    static std::vector<encoding_tensor> values(const pe& e)
    {
        if (!e.theta_trainable()) return {};
        return {{"theta", e.theta, 1.0}};
    }
    static void set(pe& e, const std::vector<row_matrix<double>>& v)
    {
        if (!v.empty()) e.set_theta(v[0]);
    }
    static std::vector<row_matrix<double>> gradients(const typename pe::parameter_gradients& g)
    {
        if (g.theta.size() == 0) return {};
        return {g.theta};
    }
};

/// sineSPE: a_f, θ, a_λ (H·D, K), and the gate logits a_g (H, D) when gated.
template <class S>
struct encoding_parameters<linrpe::positional::sine_spe<S>> {
    using pe = linrpe::positional::sine_spe<S>;
    static std::vector<encoding_tensor> values(const pe& e)
    {
        std::vector<encoding_tensor> t{{"freqs", e.freqs.template cast<double>(), 1.0},
                                       {"offsets", e.offsets.template cast<double>(), 1.0},
                                       {"gains", e.gains.template cast<double>(), 1.0}};
        if (e.gated) t.push_back({"gate", e.gate.template cast<double>(), 1.0});
        return t;
    }
    static void set(pe& e, const std::vector<row_matrix<double>>& v)
    {
        e.set_parameters(v[0], v[1], v[2]);
        if (v.size() > 3) e.set_gate(v[3]);
    }
    static std::vector<row_matrix<double>> gradients(const typename pe::parameter_gradients& g)
    {
        std::vector<row_matrix<double>> t{g.freqs, g.offsets, g.gains};
        if (g.gate.size() > 0) t.push_back(g.gate);
        return t;
    }
};

/// convSPE: the filters φ_Q, φ_K (H·D, W), and the gate logits (H, D) when gated.
template <class S>
struct encoding_parameters<linrpe::positional::conv_spe<S>> {
    using pe = linrpe::positional::conv_spe<S>;
    static std::vector<encoding_tensor> values(const pe& e)
    {
        std::vector<encoding_tensor> t{{"query_filter", e.query_filter.template cast<double>(), 1.0},
                                       {"key_filter", e.key_filter.template cast<double>(), 1.0}};
        if (e.gated) t.push_back({"gate", e.gate.template cast<double>(), 1.0});
        return t;
    }
    static void set(pe& e, const std::vector<row_matrix<double>>& v)
    {
        e.set_filters(v[0], v[1]);
        if (v.size() > 2) e.set_gate(v[2]);
    }
    static std::vector<row_matrix<double>> gradients(const typename pe::parameter_gradients& g)
    {
        std::vector<row_matrix<double>> t{g.query_filter, g.key_filter};
        if (g.gate.size() > 0) t.push_back(g.gate);
        return t;
    }
};

/// Toeplitz RPE: the biases b (H, 2·T_max − 1), at 10× the learning rate: to single out one offset among N
/// keys its b must rise ~ln N above the others, further than the base rate carries a weight in a short run.
template <class S>
struct encoding_parameters<linrpe::positional::toeplitz_rpe<S>> {
    using pe = linrpe::positional::toeplitz_rpe<S>;
    static std::vector<encoding_tensor> values(const pe& e) { return {{"bias", e.bias.template cast<double>(), 10.0}}; }
    static void set(pe& e, const std::vector<row_matrix<double>>& v) { e.set_biases(v[0]); }
    static std::vector<row_matrix<double>> gradients(const typename pe::parameter_gradients& g) { return {g.biases}; }
};

/// compose<A, B>: A's tensors, then B's.
template <class A, class B>
struct encoding_parameters<linrpe::positional::compose<A, B>> {
    using pe = linrpe::positional::compose<A, B>;
    static std::vector<encoding_tensor> values(const pe& e)
    {
        auto t = parameter_access<A>::values(e.feature_side);
        for (auto& x : parameter_access<B>::values(e.mixing)) t.push_back(std::move(x));
        return t;
    }
    static void set(pe& e, const std::vector<row_matrix<double>>& v)
    {
        const auto split = std::ptrdiff_t(parameter_access<A>::values(e.feature_side).size());
        parameter_access<A>::set(e.feature_side, {v.begin(), v.begin() + split});
        parameter_access<B>::set(e.mixing, {v.begin() + split, v.end()});
    }
    static std::vector<row_matrix<double>> gradients(const typename pe::parameter_gradients& g)
    {
        auto t = parameter_access<A>::gradients(g.feature_side);
        for (auto& x : parameter_access<B>::gradients(g.mixing)) t.push_back(std::move(x));
        return t;
    }
};

} // namespace train
