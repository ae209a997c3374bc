#pragma once
// A small causal transformer written with Eigen, whose attention layer is linrpe's (forward and backward),
// trained with AdamW on a generated lag-recall task. Shared by examples/train_lag.cpp and tests/test_train.cpp.
//
// Everything except the attention is the model's own code, written out with its manual backward: copy it
// as the template of a training loop around linrpe. Shapes: T = B·N token rows (B sequences of N tokens),
// C = width, H heads of D = C/H channels, F = MLP width, V = vocabulary.
//
//   x₀ = E[token]                                                    (T, C)  token embedding, no positions:
//   per layer:  h = LN₁(x);  q, k, v = h W_q, h W_k, h W_v           (T, H·D) the encoding supplies them
//               x ← x + attention(q, k, v) W_o                       linrpe, causal, batched (B, H, N, D) views
//               x ← x + GELU(LN₂(x) W₁ + b₁) W₂ + b₂                 (T, F) → (T, C)
//   logits = LN_f(x) W_out                                            (T, V)
//   loss = mean over positions with a target of −log softmax(logits)[target]
//
// Determinism: every loop over rows runs over fixed blocks (for_blocks) and every sum over rows runs
// serially, so a training run gives the same bits for any thread count; linrpe's batched calls promise
// the same. Eigen's own GEMM threading is switched off (Eigen::setNbThreads(1)) because its blocking depends
// on the thread count.
#include <linrpe/linear_attention.hpp>
#include <linrpe/views.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cmath>
#include <ctime>
#include <cstdint>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace train {

using linrpe::index;
using linrpe::row_matrix;
using linrpe::vector;

// ---- the encoding's trainable parameters ---------------------------------------------------------------

/// One trainable tensor of a positional encoding, in double (the encodings store their parameters in
/// double), and its learning-rate factor (e.g. a Toeplitz bias must move by ~ln N to single out one offset
/// among N, further than the base rate carries a weight in a short run).
struct encoding_tensor {
    std::string name;
    row_matrix<double> value;
    double lr_scale = 1.0;
};

/// \brief How the trainer reads, writes and differentiates the learnable parameters of a positional
/// encoding: one specialization per family that has some, a few lines each. `values` lists the tensors in a
/// fixed order, `set` loads values of the same shapes, `gradients` returns the matching members of the
/// encoding's `parameter_gradients` (what linear_attention::backward accumulates) in the same order.
/// Encodings without a parameter_gradients type (none, custom ones) need none: the transformer uses
/// frozen_parameters for them (parameter_access). A family with parameters and no specialization does not
/// compile (incomplete type), rather than training silently frozen.
template <class Encoding>
struct encoding_parameters;

/// An encoding with nothing to learn.
template <class Encoding>
struct frozen_parameters {
    static std::vector<encoding_tensor> values(const Encoding&) { return {}; }
    static void set(Encoding&, const std::vector<row_matrix<double>>&) {}
    static std::vector<row_matrix<double>> gradients(const linrpe::no_parameters&) { return {}; }
};

template <class Encoding, class = void>
struct learns : std::false_type {};
template <class Encoding>
struct learns<Encoding, std::void_t<typename Encoding::parameter_gradients>> : std::true_type {};
/// The adapter of an encoding: its encoding_parameters when it declares parameter_gradients, else frozen.
/// (Adapters of composite encodings use it for their parts.)
template <class Encoding>
using parameter_access =
    std::conditional_t<learns<Encoding>::value, encoding_parameters<Encoding>, frozen_parameters<Encoding>>;

// ---- random numbers (the same on every platform: std distributions are implementation-defined) ----------

class random {
public:
    explicit random(std::uint64_t seed) : m_engine(seed) {}
    /// Uniform in {0, .., n − 1} (modulo bias < n / 2^64).
    index below(index n) { return static_cast<index>(m_engine() % static_cast<std::uint64_t>(n)); }
    /// Uniform in (0, 1].
    double uniform() { return static_cast<double>((m_engine() >> 11) + 1) * 0x1p-53; }
    /// Standard normal (Box–Muller).
    double normal()
    {
        const double r = std::sqrt(-2.0 * std::log(uniform()));
        return r * std::cos(6.283185307179586 * uniform());
    }

private:
    std::mt19937_64 m_engine;
};

// ---- the task ---------------------------------------------------------------------------------------------

/// B sequences of N tokens, row-major (B, N); target < 0: no loss at that position.
struct batch {
    index sequences = 0, tokens = 0;
    std::vector<int> input, target;
};

/// \brief Lag recall on uniform random tokens: the target at position i is the token `lag` positions back;
/// with `second_lag` > 0, tokens of the lower half of the vocabulary recall `lag` back and the others
/// `second_lag` back (the query's content picks the offset). Positions i < max(lag, second_lag) have no
/// target. Solving it needs relative position: the token embeddings carry none.
struct lag_task {
    index vocab = 16, lag = 8, second_lag = 0;

    index first_target() const { return std::max(lag, second_lag); }
    batch sample(index sequences, index tokens, random& rng) const
    {
        batch b;
        b.sequences = sequences;
        b.tokens = tokens;
        b.input.resize(static_cast<std::size_t>(sequences * tokens));
        b.target.assign(b.input.size(), -1);
        for (auto& t : b.input) t = static_cast<int>(rng.below(vocab));
        for (index s = 0; s < sequences; ++s)
            for (index i = first_target(); i < tokens; ++i) {
                const index at = s * tokens + i;
                const index back = second_lag > 0 && b.input[at] >= vocab / 2 ? second_lag : lag;
                b.target[at] = b.input[at - back];
            }
        return b;
    }
};

// ---- parallel loops over fixed blocks ------------------------------------------------------------------------

/// Work (flops) below which a loop runs on the calling thread: waking a second thread costs about as much,
/// and far more when the machine is oversubscribed (an idle thread can wait a scheduler slice).
inline constexpr double parallel_work = 1 << 17;

/// Runs f(first, last) over the blocks [0, block), [block, 2·block), .. of `rows`, in parallel when
/// threads != 1 (0: the OpenMP default) and the loop's `work` (flops) is worth it. The blocks never depend
/// on the thread count, so neither do the bits.
template <class F>
void for_blocks(index rows, index block, int threads, double work, const F& f)
{
    const index count = (rows + block - 1) / block;
#if defined(_OPENMP)
    const int team = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1 && count > 1 && work >= parallel_work)
#else
    (void)threads, (void)work;
#endif
    for (index i = 0; i < count; ++i) f(i * block, std::min(rows, (i + 1) * block));
}

/// Row blocks of the token-parallel loops, and of the weight-gradient GEMMs (rows of dW).
inline constexpr index token_block = 64, weight_block = 16;

/// out = a·b (a (T, K), b (K, M)), by row blocks of a.
template <class S>
void matmul(const row_matrix<S>& a, const row_matrix<S>& b, row_matrix<S>& out, int threads)
{
    out.resize(a.rows(), b.cols());
    for_blocks(a.rows(), token_block, threads, 2.0 * double(a.size()) * double(b.cols()), [&](index r0, index r1) {
        out.middleRows(r0, r1 - r0).noalias() = a.middleRows(r0, r1 - r0) * b;
    });
}
/// out (+)= a·bᵀ (a (T, M), b (K, M)): the input gradient dX = dY Wᵀ of Y = X W.
template <class S>
void matmul_bt(const row_matrix<S>& a, const row_matrix<S>& b, row_matrix<S>& out, int threads, bool accumulate = false)
{
    if (!accumulate) out.setZero(a.rows(), b.rows());
    for_blocks(a.rows(), token_block, threads, 2.0 * double(a.size()) * double(b.rows()), [&](index r0, index r1) {
        out.middleRows(r0, r1 - r0).noalias() += a.middleRows(r0, r1 - r0) * b.transpose();
    });
}
/// out += aᵀ·b (a (T, K), b (T, M), out (K, M)): the weight gradient dW = Xᵀ dY, by row blocks of out (each
/// entry is one sum over all T rows, so the result does not depend on the blocks either).
template <class S>
void matmul_at_add(const row_matrix<S>& a, const row_matrix<S>& b, row_matrix<S>& out, int threads)
{
    for_blocks(a.cols(), weight_block, threads, 2.0 * double(a.size()) * double(b.cols()), [&](index r0, index r1) {
        out.middleRows(r0, r1 - r0).noalias() += a.middleCols(r0, r1 - r0).transpose() * b;
    });
}

// ---- layers --------------------------------------------------------------------------------------------------

/// A trainable tensor, its gradient, and whether AdamW's weight decay applies (matrices of the projections,
/// the MLP and the head; not gains, biases, embeddings or encoding parameters).
template <class S>
struct parameter {
    std::string name;
    row_matrix<S> value, grad;
    bool decay = false;
    double lr_scale = 1.0; ///< factor on the learning rate (set by the encodings' adapters)
};

/// Row-wise LayerNorm y = (x − μ)/σ · γ + β with σ = √(var + ε); keeps x̂ and 1/σ for the backward.
template <class S>
struct layer_norm {
    static constexpr double eps = 1e-5;
    row_matrix<S> xhat; // (T, C)
    vector<S> rstd;     // (T)

    void forward(const row_matrix<S>& x, const parameter<S>& gain, const parameter<S>& bias, row_matrix<S>& y, int threads)
    {
        const index t = x.rows(), c = x.cols();
        xhat.resize(t, c);
        rstd.resize(t);
        y.resize(t, c);
        for_blocks(t, token_block, threads, 10.0 * double(x.size()), [&](index r0, index r1) {
            for (index i = r0; i < r1; ++i) {
                const S mean = x.row(i).mean();
                const S var = (x.row(i).array() - mean).square().mean();
                rstd(i) = S(1) / std::sqrt(var + S(eps));
                xhat.row(i) = (x.row(i).array() - mean) * rstd(i);
                y.row(i) = xhat.row(i).cwiseProduct(gain.value) + bias.value;
            }
        });
    }
    /// dx (+)= the input gradient for dy; dγ += Σ_rows dy ⊙ x̂, dβ += Σ_rows dy.
    /// dx = (1/σ)(g − mean(g) − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ γ.
    void backward(const row_matrix<S>& dy, parameter<S>& gain, parameter<S>& bias, row_matrix<S>& dx, int threads,
                  bool accumulate) const
    {
        const index t = dy.rows(), c = dy.cols();
        if (!accumulate) dx.setZero(t, c);
        gain.grad += dy.cwiseProduct(xhat).colwise().sum();
        bias.grad += dy.colwise().sum();
        for_blocks(t, token_block, threads, 10.0 * double(dy.size()), [&](index r0, index r1) {
            for (index i = r0; i < r1; ++i) {
                const auto g = dy.row(i).cwiseProduct(gain.value);
                const S mean_g = g.mean(), mean_gx = g.cwiseProduct(xhat.row(i)).mean();
                dx.row(i).array() += rstd(i) * (g.array() - mean_g - xhat.row(i).array() * mean_gx);
            }
        });
    }
};

/// GELU, tanh form: gelu(u) = ½u(1 + tanh(s(u + 0.044715u³))), s = √(2/π) (smooth, so finite differences
/// of the whole model see no kinks).
template <class S>
struct gelu {
    static constexpr double s = 0.7978845608028654, c = 0.044715;
    static void forward(const row_matrix<S>& u, row_matrix<S>& g, int threads)
    {
        g.resize(u.rows(), u.cols());
        for_blocks(u.rows(), token_block, threads, 20.0 * double(u.size()), [&](index r0, index r1) {
            const auto x = u.middleRows(r0, r1 - r0).array();
            g.middleRows(r0, r1 - r0) = (S(0.5) * x * (S(1) + (S(s) * (x + S(c) * x.cube())).tanh())).matrix();
        });
    }
    /// du = dg ⊙ gelu'(u), gelu'(u) = ½(1 + t) + ½u(1 − t²)·s(1 + 3c·u²), t = tanh(s(u + c·u³)).
    static void backward(const row_matrix<S>& u, const row_matrix<S>& dg, row_matrix<S>& du, int threads)
    {
        du.resize(u.rows(), u.cols());
        for_blocks(u.rows(), token_block, threads, 20.0 * double(u.size()), [&](index r0, index r1) {
            const auto x = u.middleRows(r0, r1 - r0).array();
            const auto t = (S(s) * (x + S(c) * x.cube())).tanh().eval();
            const auto slope = S(0.5) * (S(1) + t) + S(0.5) * x * (S(1) - t.square()) * S(s) * (S(1) + S(3 * c) * x.square());
            du.middleRows(r0, r1 - r0) = (dg.middleRows(r0, r1 - r0).array() * slope).matrix();
        });
    }
};

// ---- the model -------------------------------------------------------------------------------------------------

struct config {
    index vocab = 16, width = 64, heads = 4, layers = 2, mlp = 256;
    int threads = 0; ///< for the model's loops and linrpe's batched calls (0: the OpenMP default)
};

/// \brief The transformer of the header comment. `Attention` is a causal linrpe::linear_attention; the
/// factory builds one per layer (feature map, encoding, options). The model owns the options' thread count.
template <class Attention>
class transformer {
public:
    using scalar = typename Attention::scalar_type;
    using S = scalar;
    using matrix = row_matrix<S>;
    using encoding = typename Attention::positional_encoding_type;
    using encoding_access = parameter_access<encoding>;

    transformer(const config& cfg, const std::function<Attention(index layer)>& make_attention, std::uint64_t seed)
        : m_cfg(cfg)
    {
        if (cfg.width % cfg.heads != 0) throw std::invalid_argument("transformer: width must be a multiple of heads");
        Eigen::setNbThreads(1); // see the header comment: the model threads its own fixed blocks
        random rng(seed);
        const auto gaussian = [&rng](index rows, index cols, double std) {
            matrix m(rows, cols);
            for (index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(std * rng.normal());
            return m;
        };
        const auto make = [](std::string name, matrix value, bool decay) {
            parameter<S> p;
            p.name = std::move(name);
            p.grad = matrix::Zero(value.rows(), value.cols());
            p.value = std::move(value);
            p.decay = decay;
            return p;
        };
        const index c = cfg.width, f = cfg.mlp;
        const double in = 1.0 / std::sqrt(double(c)), out = in / std::sqrt(2.0 * double(cfg.layers)); // GPT-2's residual scaling
        m_embedding = make("embedding", gaussian(cfg.vocab, c, 1.0), false);
        for (index l = 0; l < cfg.layers; ++l) {
            layer y(make_attention(l));
            auto opt = y.attn.opts();
            if (opt.mask != linrpe::masking::causal) throw std::invalid_argument("transformer: the attention must be causal");
            opt.threads = cfg.threads;
            y.attn.set_options(opt);
            const std::string p = "layer" + std::to_string(l) + ".";
            y.ln1_gain = make(p + "ln1.gain", matrix::Ones(1, c), false);
            y.ln1_bias = make(p + "ln1.bias", matrix::Zero(1, c), false);
            y.wq = make(p + "attn.wq", gaussian(c, c, in), true);
            y.wk = make(p + "attn.wk", gaussian(c, c, in), true);
            y.wv = make(p + "attn.wv", gaussian(c, c, in), true);
            y.wo = make(p + "attn.wo", gaussian(c, c, out), true);
            for (auto& t : encoding_access::values(y.attn.positional())) {
                y.encoding.push_back(make(p + "attn.encoding." + t.name, t.value.template cast<S>(), false));
                y.encoding.back().lr_scale = t.lr_scale;
            }
            y.ln2_gain = make(p + "ln2.gain", matrix::Ones(1, c), false);
            y.ln2_bias = make(p + "ln2.bias", matrix::Zero(1, c), false);
            y.w1 = make(p + "mlp.w1", gaussian(c, f, in), true);
            y.b1 = make(p + "mlp.b1", matrix::Zero(1, f), false);
            y.w2 = make(p + "mlp.w2", gaussian(f, c, out / std::sqrt(double(f) / double(c))), true);
            y.b2 = make(p + "mlp.b2", matrix::Zero(1, c), false);
            m_layers.push_back(std::move(y));
        }
        m_lnf_gain = make("lnf.gain", matrix::Ones(1, c), false);
        m_lnf_bias = make("lnf.bias", matrix::Zero(1, c), false);
        m_head = make("head", gaussian(c, cfg.vocab, in), true);
    }

    const config& cfg() const { return m_cfg; }
    const Attention& attention(index layer) const { return m_layers[static_cast<std::size_t>(layer)].attn; }

    /// Every trainable tensor, in a fixed order (the optimizer's and the gradient check's view of the model).
    std::vector<parameter<S>*> parameters()
    {
        std::vector<parameter<S>*> all{&m_embedding};
        for (auto& y : m_layers) {
            for (auto* p : {&y.ln1_gain, &y.ln1_bias, &y.wq, &y.wk, &y.wv, &y.wo}) all.push_back(p);
            for (auto& p : y.encoding) all.push_back(&p);
            for (auto* p : {&y.ln2_gain, &y.ln2_bias, &y.w1, &y.b1, &y.w2, &y.b2}) all.push_back(p);
        }
        for (auto* p : {&m_lnf_gain, &m_lnf_bias, &m_head}) all.push_back(p);
        return all;
    }

    /// \brief Mean cross-entropy of the batch over the positions with a target; keeps what backward() needs.
    /// The encodings first receive the current values of their parameter tensors (the parameter list is
    /// the one source of truth, so an optimizer or a finite difference only ever writes there).
    double forward(const batch& b)
    {
        const int th = m_cfg.threads;
        const index t = b.sequences * b.tokens, c = m_cfg.width;
        m_batch = b;
        m_x0.resize(t, c);
        for (index i = 0; i < t; ++i) m_x0.row(i) = m_embedding.value.row(b.input[static_cast<std::size_t>(i)]);
        const matrix* x = &m_x0;
        for (auto& y : m_layers) {
            load_encoding(y);
            y.ln1.forward(*x, y.ln1_gain, y.ln1_bias, y.h, th);
            matmul(y.h, y.wq.value, y.q, th); // (T, H·D) = (B, N, H, D)
            matmul(y.h, y.wk.value, y.k, th);
            matmul(y.h, y.wv.value, y.v, th);
            y.a.resize(t, c);
            y.attn.forward(view(y.q), view(y.k), view(y.v), view(y.a)); // (B, H, N, D) views, no copies
            matmul(y.a, y.wo.value, y.x_mid, th);
            y.x_mid += *x;
            y.ln2.forward(y.x_mid, y.ln2_gain, y.ln2_bias, y.h2, th);
            matmul(y.h2, y.w1.value, y.u, th); // (T, F)
            y.u.rowwise() += y.b1.value.row(0);
            gelu<S>::forward(y.u, y.g, th);
            matmul(y.g, y.w2.value, y.x_out, th); // (T, C)
            y.x_out.rowwise() += y.b2.value.row(0);
            y.x_out += y.x_mid;
            x = &y.x_out;
        }
        m_lnf.forward(*x, m_lnf_gain, m_lnf_bias, m_hf, th);
        matmul(m_hf, m_head.value, m_logits, th); // (T, V)
        // Softmax in place (logits → probabilities), then the loss over the rows with a target.
        for_blocks(t, token_block, th, 20.0 * double(m_logits.size()), [&](index r0, index r1) {
            for (index i = r0; i < r1; ++i) {
                auto row = m_logits.row(i).array();
                row = (row - row.maxCoeff()).exp();
                row /= row.sum();
            }
        });
        double loss = 0;
        m_counted = 0;
        for (index i = 0; i < t; ++i)
            if (const int y = b.target[static_cast<std::size_t>(i)]; y >= 0) {
                loss -= std::log(static_cast<double>(m_logits(i, y)));
                ++m_counted;
            }
        return m_counted > 0 ? loss / double(m_counted) : 0.0;
    }

    /// Fraction of the last forward's target positions whose most probable token is the target.
    double accuracy() const
    {
        index right = 0;
        for (index i = 0; i < m_logits.rows(); ++i)
            if (const int y = m_batch.target[static_cast<std::size_t>(i)]; y >= 0) {
                index best = 0;
                m_logits.row(i).maxCoeff(&best);
                right += best == y;
            }
        return m_counted > 0 ? double(right) / double(m_counted) : 0.0;
    }

    /// Gradients of the last forward's loss into every parameter's `grad` (overwritten).
    void backward()
    {
        const int th = m_cfg.threads;
        const batch& b = m_batch;
        const index t = m_logits.rows();
        for (auto* p : parameters()) p->grad.setZero();
        // dlogits = (softmax − onehot(target)) / count on rows with a target, 0 elsewhere.
        matrix dlogits = m_logits;
        const S inv = S(1) / static_cast<S>(std::max<index>(m_counted, 1));
        for (index i = 0; i < t; ++i) {
            const int y = b.target[static_cast<std::size_t>(i)];
            if (y < 0) {
                dlogits.row(i).setZero();
                continue;
            }
            dlogits(i, y) -= S(1);
            dlogits.row(i) *= inv;
        }
        matmul_at_add(m_hf, dlogits, m_head.grad, th);
        matrix dh, dx;
        matmul_bt(dlogits, m_head.value, dh, th);
        m_lnf.backward(dh, m_lnf_gain, m_lnf_bias, dx, th, false); // dx: gradient of the residual stream
        matrix dg, du, da, dq, dk, dv;
        for (std::size_t l = m_layers.size(); l-- > 0;) {
            layer& y = m_layers[l];
            // MLP: x_out = x_mid + GELU(h2 W1 + b1) W2 + b2; dx is dL/dx_out and becomes dL/dx_mid.
            y.b2.grad += dx.colwise().sum();
            matmul_at_add(y.g, dx, y.w2.grad, th);
            matmul_bt(dx, y.w2.value, dg, th);
            gelu<S>::backward(y.u, dg, du, th);
            y.b1.grad += du.colwise().sum();
            matmul_at_add(y.h2, du, y.w1.grad, th);
            matmul_bt(du, y.w1.value, dh, th);
            y.ln2.backward(dh, y.ln2_gain, y.ln2_bias, dx, th, true);
            // Attention: x_mid = x_in + attention(h Wq, h Wk, h Wv) Wo; dx becomes dL/dx_in.
            matmul_at_add(y.a, dx, y.wo.grad, th);
            matmul_bt(dx, y.wo.value, da, th);
            dq.resize(t, m_cfg.width);
            dk.resize(t, m_cfg.width);
            dv.resize(t, m_cfg.width);
            attention_backward(y, da, dq, dk, dv);
            matmul_at_add(y.h, dq, y.wq.grad, th);
            matmul_at_add(y.h, dk, y.wk.grad, th);
            matmul_at_add(y.h, dv, y.wv.grad, th);
            matmul_bt(dq, y.wq.value, dh, th);
            matmul_bt(dk, y.wk.value, dh, th, true);
            matmul_bt(dv, y.wv.value, dh, th, true);
            y.ln1.backward(dh, y.ln1_gain, y.ln1_bias, dx, th, true);
        }
        // Embedding rows are summed over the tokens that used them, serially (a fixed order).
        for (index i = 0; i < t; ++i) m_embedding.grad.row(b.input[static_cast<std::size_t>(i)]) += dx.row(i);
    }

private:
    struct layer {
        explicit layer(Attention a) : attn(std::move(a)) {}
        Attention attn;
        parameter<S> ln1_gain, ln1_bias, wq, wk, wv, wo, ln2_gain, ln2_bias, w1, b1, w2, b2;
        std::vector<parameter<S>> encoding; // the encoding's trainable tensors (encoding_parameters)
        // activations of the last forward
        layer_norm<S> ln1, ln2;
        matrix h, q, k, v, a, x_mid, h2, u, g, x_out;
    };

    // (T, H·D) activations = (B, N, H, D) buffers, seen as (B, H, N, D) by linrpe (view_bnhd: no transpose).
    linrpe::tensor_view<S> view(matrix& m) const
    {
        return linrpe::view_bnhd(m.data(), m_batch.sequences, m_batch.tokens, m_cfg.heads, m_cfg.width / m_cfg.heads);
    }

    // The parameter list holds the encoding's values: hand them to the attention before it runs.
    void load_encoding(layer& y) const
    {
        if (y.encoding.empty()) return;
        std::vector<row_matrix<double>> values;
        for (const auto& p : y.encoding) values.push_back(p.value.template cast<double>());
        encoding_access::set(y.attn.positional(), values);
    }

    // dq, dk, dv (T, H·D) of ⟨da, attention(q, k, v)⟩ for the whole batch in one batched call, and the
    // gradients of the encoding's parameters (summed over batch and heads by linrpe) into the layer's tensors.
    void attention_backward(layer& y, matrix& da, matrix& dq, matrix& dk, matrix& dv)
    {
        if (y.encoding.empty()) { // nothing to learn: input gradients only (no parameter-gradient work)
            y.attn.backward(view(y.q), view(y.k), view(y.v), view(da), view(dq), view(dk), view(dv));
            return;
        }
        auto pg = y.attn.make_parameter_gradients(); // zeros: backward accumulates (+=) into it
        y.attn.backward(view(y.q), view(y.k), view(y.v), view(da), view(dq), view(dk), view(dv), /*first_position=*/0,
                        /*workspace=*/nullptr, &pg);
        const auto grads = encoding_access::gradients(pg);
        for (std::size_t i = 0; i < y.encoding.size(); ++i) y.encoding[i].grad += grads[i].template cast<S>();
    }

    config m_cfg;
    parameter<S> m_embedding, m_lnf_gain, m_lnf_bias, m_head;
    std::vector<layer> m_layers;
    // activations of the last forward
    batch m_batch;
    index m_counted = 0;
    matrix m_x0, m_hf, m_logits; // m_logits holds the softmax probabilities after forward()
    layer_norm<S> m_lnf;
};

// ---- optimizer and training loop -------------------------------------------------------------------------

/// AdamW (Loshchilov & Hutter, ICLR 2019): Adam moments with bias correction, decoupled weight decay on the
/// tensors marked `decay`. State in double, so float and double models step alike.
class adamw {
public:
    double beta1 = 0.9, beta2 = 0.98, eps = 1e-8, weight_decay = 0.01;

    /// One step at learning rate base_lr (times each tensor's lr_scale).
    template <class S>
    void step(const std::vector<parameter<S>*>& params, double base_lr)
    {
        if (m_m.empty())
            for (const auto* p : params) {
                m_m.push_back(row_matrix<double>::Zero(p->value.rows(), p->value.cols()));
                m_v.push_back(row_matrix<double>::Zero(p->value.rows(), p->value.cols()));
            }
        ++m_t;
        const double c1 = 1.0 - std::pow(beta1, double(m_t)), c2 = 1.0 - std::pow(beta2, double(m_t));
        for (std::size_t i = 0; i < params.size(); ++i) {
            parameter<S>& p = *params[i];
            const double lr = base_lr * p.lr_scale;
            const row_matrix<double> g = p.grad.template cast<double>();
            m_m[i] = beta1 * m_m[i] + (1 - beta1) * g;
            m_v[i] = beta2 * m_v[i] + (1 - beta2) * g.cwiseAbs2();
            row_matrix<double> w = p.value.template cast<double>();
            if (p.decay) w *= 1.0 - lr * weight_decay;
            w.array() -= lr * (m_m[i].array() / c1) / ((m_v[i].array() / c2).sqrt() + eps);
            p.value = w.template cast<S>();
        }
    }

private:
    std::vector<row_matrix<double>> m_m, m_v;
    long m_t = 0;
};

/// Steps, batch shape and optimizer settings of a run; the data stream and the model's seed are fixed.
struct schedule {
    index steps = 1500, sequences = 8, tokens = 128;
    double lr = 3e-3, warmup = 0.05, final_lr = 0.1; ///< linear warmup over a fraction, cosine to final_lr·lr
    double weight_decay = 0.01;
    double clip = 1.0; ///< global gradient-norm clip (0: none); the norm before clipping is recorded
    std::uint64_t data_seed = 1;
};

/// What a run records per step.
struct history {
    std::vector<double> loss, grad_norm;
    double seconds = 0, cpu_seconds = 0; ///< wall time, and CPU time of the process (all threads)
    /// Largest gradient norm from step `from` on (the first steps' norms are the initialization's).
    double max_grad_norm(std::size_t from = 0) const
    {
        return from >= grad_norm.size() ? 0.0 : *std::max_element(grad_norm.begin() + std::ptrdiff_t(from), grad_norm.end());
    }
    /// Mean loss of the last `count` steps (the final train loss, less noisy than one batch).
    double final_loss(std::size_t count = 20) const
    {
        count = std::min(count, loss.size());
        double sum = 0;
        for (std::size_t i = loss.size() - count; i < loss.size(); ++i) sum += loss[i];
        return count > 0 ? sum / double(count) : 0.0;
    }
};

inline double learning_rate(const schedule& s, index step)
{
    const double warm = std::max(1.0, s.warmup * double(s.steps));
    if (double(step) < warm) return s.lr * (double(step) + 1) / warm;
    const double progress = (double(step) - warm) / std::max(1.0, double(s.steps) - warm);
    return s.lr * (s.final_lr + (1 - s.final_lr) * 0.5 * (1 + std::cos(3.141592653589793 * progress)));
}

/// Trains `model` on fresh batches of `task` (one stream from data_seed) for s.steps AdamW steps.
template <class Model>
history fit(Model& model, const lag_task& task, const schedule& s)
{
    using S = typename Model::scalar;
    history h;
    random data(s.data_seed);
    adamw opt;
    opt.weight_decay = s.weight_decay;
    const auto params = model.parameters();
    const auto start = std::chrono::steady_clock::now();
    const std::clock_t cpu_start = std::clock();
    for (index step = 0; step < s.steps; ++step) {
        const batch b = task.sample(s.sequences, s.tokens, data);
        h.loss.push_back(model.forward(b));
        model.backward();
        double sq = 0;
        for (const auto* p : params) sq += p->grad.template cast<double>().squaredNorm();
        const double norm = std::sqrt(sq);
        h.grad_norm.push_back(norm);
        if (s.clip > 0 && norm > s.clip)
            for (auto* p : params) p->grad *= static_cast<S>(s.clip / norm);
        opt.step(params, learning_rate(s, step));
    }
    h.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    h.cpu_seconds = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    return h;
}

/// Accuracy on positions with a target (i >= the task's lag) of `sequences` fresh sequences of `tokens`.
template <class Model>
double evaluate(Model& model, const lag_task& task, index sequences, index tokens, std::uint64_t seed)
{
    random data(seed);
    model.forward(task.sample(sequences, tokens, data));
    return model.accuracy();
}

} // namespace train
