#pragma once
/// \file
/// \brief positional::lrpe: Linearized Relative Positional Encoding (unitary post-feature transforms).

#include "../detail/lrpe_angles.hpp"
#include "../errors.hpp"
#include "../random/philox_stream.hpp"
#include "../types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace linrpe {

/// The core Λ^{(s)} of an LRPE transform (Qin et al. 2023, §2.2 of reference/lrpe.md).
enum class lrpe_kind {
    rotate,      ///< 2×2 rotations of channel pairs by s·θ_i (real orthogonal solution; RoPE is a member)
    cosine,      ///< unitary diagonal e^{isθ_j}, real form [x ⊙ cos sθ ; x ⊙ sin sθ]: width doubles
    permutation, ///< Π^s for a fixed seeded random permutation π (PermuteFormer without its decay)
};

/// Which channels a `rotate` pair joins.
enum class lrpe_layout {
    interleaved, ///< pairs (2i, 2i+1); odd width leaves the last channel unrotated (RoFormer, legacy xmixers)
    half_split,  ///< pairs (i, i + ⌊M/2⌋); odd width leaves the last channel unrotated (GPT-NeoX, xopes)
};

/// The basis change P applied before the core: T(x, s) = Λ^{(s)} P x.
enum class lrpe_basis {
    identity,    ///< P = I
    householder, ///< P = I − 2 v̂ v̂ᵀ (fixed seeded v, or a user/learned v)
    odd_even,    ///< (P x)_{2k} = x_k, (P x)_{2k+1} = x_{k + ⌈M/2⌉}
    dct,         ///< orthonormal DCT-II
};

/// How θ is set at construction.
enum class lrpe_theta {
    rope,            ///< θ_i = base^{−2i/e}: e = 2·(rotated pairs) for rotate, e = M for cosine
    cosformer,       ///< every θ = π/(2·max_len) (Qin et al., cosFormer, ICLR 2022)
    explicit_values, ///< user values (trained weights): set_theta (or assign `theta`) before the first call
};

/// \brief Construction options of positional::lrpe (C++17: default-construct, then set fields).
struct lrpe_options {
    lrpe_layout layout = lrpe_layout::interleaved;
    /// Fraction f in (0, 1] of the P = ⌊M/2⌋ pairs that rotate, the first in the layout's own pair order
    /// (f = 1/2 is the authors' "mix rope" core 2). rotate only. The count is ⌈f·P⌉, except that a product
    /// within 1e-9 above an integer counts as that integer (f = 0.28, P = 25 gives 7 although 0.28·25 rounds to
    /// 7.000000000000001), and at least 1 pair when P >= 1. To avoid the rule, set rotate_pairs instead.
    double rotate_fraction = 1.0;
    /// Explicit number of rotated pairs in [0, ⌊M/2⌋] (rotate only); −1 (default): from rotate_fraction.
    /// Takes precedence over rotate_fraction.
    index rotate_pairs = -1;
    lrpe_basis basis = lrpe_basis::identity;
    lrpe_theta theta = lrpe_theta::rope;
    double base = 10000.0; ///< RoPE base (lrpe_theta::rope and the initial explicit values)
    index max_len = 0;     ///< cosFormer's M (lrpe_theta::cosformer): positivity holds for offsets <= max_len
    std::uint64_t seed = 0; ///< fixed Householder vectors and permutations, drawn per head
};

namespace positional {

/// \brief LRPE (Qin, Sun, Lu, Deng, Li, Han, Dai, Kong, Zhong, *Linearized Relative Positional Encoding*,
/// TMLR 2023): a post-feature, position-dependent unitary transform
///
///     ψ_s = T(φ(q_s), s),  κ_t = T(φ(k_t), t),  T(x, s) = Λ^{(s)} P x,  Λ^{(s)ᵀ} Λ^{(t)} = Λ^{(t−s)}
///
/// so the score ⟨ψ_s, κ_t⟩ = (Px)ᵀ Λ^{(t−s)} (Py) depends only on t − s and linear attention stays
/// linear. Kinds (lrpe_kind): rotate, cosine (width 2M), permutation; P (lrpe_basis): identity,
/// Householder, odd-even, DCT-II; θ (lrpe_theta): RoPE schedule, cosFormer's π/(2·max_len), explicit.
/// rotate + identity + RoPE θ is RoPE (Su et al., RoFormer 2021); cosine + identity + cosFormer θ with
/// relu features and `sum` is cosFormer.
///
/// Cost per call of n rows: O(n·M) (plus O(n·M²) for the DCT basis) and O(64·M) scratch; angles are
/// evaluated exactly at any absolute position (detail::reduced_angle), so float results at position 10^6
/// are as accurate as at 0. Scores can be negative: use normalization::rms or none — `sum` is accepted only
/// for cosine + cosFormer θ (+ identity or odd-even P) within max_len.
///
/// Parameters are per head, in double whatever Scalar is, so trained weights load directly: set them with
/// the validated setters set_theta and set_householder (shape and finiteness checked on set). The data
/// members `theta` (H, count) and `householder` (H, M) stay public for compatibility; direct writes are
/// validated before every use instead (check_input). With lrpe_theta::explicit_values θ starts empty and
/// every call is refused until it is set: silently running on RoPE values would hide a missing load.
///
/// Training (docs/design.md §16): encode_post_backward gives dφ = Pᵀ Λ^{(s)ᵀ} dψ for every kind and P, and
/// the gradients of the trainable parameters: θ when explicit (θ constructor or set_theta), shape (H,
/// theta_count()), and the learned Householder vector (set_householder(v, true)), shape (H, M), through
/// v/(‖v‖ + 1e-6). The RoPE schedule, cosFormer's θ, the seeded Householder vector, permutations, odd-even
/// and DCT are fixed (empty members of parameter_gradients). An optimizer step applies
/// `set_theta(theta − lr·g.theta)` and `set_householder(householder − lr·g.householder, true)`.
///
/// Positions: angles are exact (reduced in double, detail::reduced_angle) for positions up to 2^53 − 1,
/// the integers a double holds; check_positions refuses positions beyond that, and negative ones.
/// \tparam Scalar default scalar of a linear_attention using this encoding (float or double).
template <class Scalar = float>
class lrpe {
public:
    using scalar_type = Scalar;
    static constexpr bool has_pre_feature = false;
    static constexpr bool has_post_feature = true;
    static constexpr bool has_mixing = false;

    /// θ per head (H, theta_count()): pair i (rotate) or channel j (cosine); empty for permutation.
    row_matrix<double> theta;
    /// Householder vectors per head (H, M) when basis() is householder (else empty). Fixed vectors are
    /// stored already unit-norm; learned ones (householder_learned) are normalized at each use as
    /// v / (‖v‖ + 1e-6), as in the authors' code.
    row_matrix<double> householder;
    bool householder_learned = false;

    /// \brief `heads` heads of width `dim` (the feature-map output width M).
    lrpe(lrpe_kind kind, index dim, index heads = 1, const lrpe_options& opt = lrpe_options())
        : m_kind(kind), m_dim(dim), m_heads(heads), m_opt(opt)
    {
        detail::require_positive("lrpe dim", dim);
        detail::require_positive("lrpe heads", heads);
        if (!(opt.rotate_fraction > 0.0 && opt.rotate_fraction <= 1.0))
            detail::fail("lrpe_options.rotate_fraction", "a value in (0, 1]", opt.rotate_fraction);
        if (opt.rotate_pairs < -1 || opt.rotate_pairs > dim / 2)
            detail::fail("lrpe_options.rotate_pairs", detail::concat("-1 (use rotate_fraction) or a count in [0, ", dim / 2, "]"),
                         opt.rotate_pairs);
        if (opt.rotate_pairs >= 0 && kind != lrpe_kind::rotate)
            detail::fail("lrpe_options.rotate_pairs (rotate kind only)", "-1 for cosine and permutation", opt.rotate_pairs);
        if (!(opt.base > 0.0) || !std::isfinite(opt.base)) detail::fail("lrpe_options.base", "a finite value > 0", opt.base);
        if (opt.theta == lrpe_theta::cosformer && opt.max_len < 1)
            detail::fail("lrpe_options.max_len (cosFormer θ = π/(2·max_len))", "a value >= 1", opt.max_len);
        const index pairs = dim / 2;
        m_rotated = kind != lrpe_kind::rotate ? 0 : opt.rotate_pairs >= 0 ? opt.rotate_pairs : pairs_of_fraction(opt.rotate_fraction, pairs);
        m_half = pairs;
        init_theta();
        init_basis();
        if (kind == lrpe_kind::permutation) init_permutations();
    }

    /// \brief Explicit θ (H, theta_count()), e.g. trained weights; H = theta.rows().
    lrpe(lrpe_kind kind, index dim, const row_matrix<double>& theta_values, lrpe_options opt = lrpe_options())
        : lrpe(kind, dim, std::max<index>(theta_values.rows(), 1), with_explicit(opt))
    {
        set_theta(theta_values);
    }

    /// RoPE: rotate + P = I + θ_i = base^{−2i/M} (interleaved or half-split pairs).
    static lrpe rope(index dim, index heads = 1, double base = 10000.0, lrpe_layout layout = lrpe_layout::interleaved)
    {
        lrpe_options opt;
        opt.base = base;
        opt.layout = layout;
        return lrpe(lrpe_kind::rotate, dim, heads, opt);
    }
    /// cosFormer's re-weighting: cosine + P = I + θ = π/(2·max_len); with relu features `sum` is allowed.
    static lrpe cosformer(index dim, index max_len, index heads = 1)
    {
        lrpe_options opt;
        opt.theta = lrpe_theta::cosformer;
        opt.max_len = max_len;
        return lrpe(lrpe_kind::cosine, dim, heads, opt);
    }

    lrpe_kind kind() const { return m_kind; }
    index dim() const { return m_dim; }
    index heads() const { return m_heads; }
    const lrpe_options& config() const { return m_opt; }
    lrpe_layout layout() const { return m_opt.layout; }
    lrpe_basis basis() const { return m_opt.basis; }
    /// Number of rotated pairs (rotate), 0 otherwise: lrpe_options::rotate_pairs, or from rotate_fraction.
    index rotated_pairs() const { return m_rotated; }
    /// The rule of lrpe_options::rotate_fraction: rotated pairs for fraction f of `pairs` pairs.
    static index pairs_of_fraction(double f, index pairs)
    {
        const index count = static_cast<index>(std::ceil(f * double(pairs) - 1e-9));
        return std::min<index>(pairs, std::max<index>(pairs > 0 ? 1 : 0, count));
    }
    /// Number of θ values per head: rotated pairs (rotate), M (cosine), 0 (permutation).
    index theta_count() const
    {
        return m_kind == lrpe_kind::rotate ? m_rotated : m_kind == lrpe_kind::cosine ? m_dim : 0;
    }
    /// π of `head`: (Πx)_j = x_{π(j)}.
    const std::vector<index>& permutation(index head) const
    {
        require_head(head);
        if (m_kind != lrpe_kind::permutation) detail::fail("lrpe kind (permutation())", "lrpe_kind::permutation", "another kind");
        return m_perm[std::size_t(head)];
    }

    /// Replaces θ (H, theta_count()), the validated way to load trained values; throws naming `theta` on a
    /// shape mismatch or a non-finite value, leaving θ unchanged.
    void set_theta(const row_matrix<double>& values)
    {
        check_theta_matrix(values);
        theta = values;
        m_opt.theta = lrpe_theta::explicit_values;
    }

    /// \brief Replaces the Householder vectors (H, M) and switches the basis to householder. `learned`:
    /// normalized at each use as v/(‖v‖ + 1e-6); otherwise normalized here, once, exactly.
    void set_householder(const row_matrix<double>& vectors, bool learned)
    {
        if (vectors.rows() != m_heads || vectors.cols() != m_dim)
            detail::fail("householder (vectors, one row per head)", detail::shape(m_heads, m_dim),
                         detail::shape(vectors.rows(), vectors.cols()));
        detail::require_all_finite("householder", vectors);
        for (index h = 0; h < m_heads; ++h) require_nonzero_householder(vectors, h);
        householder = vectors;
        householder_learned = learned;
        if (!learned) // stableNorm: no underflow for 1e-170 entries, no overflow for 1e170
            for (index h = 0; h < m_heads; ++h) householder.row(h) /= householder.row(h).stableNorm();
        m_opt.basis = lrpe_basis::householder;
    }

    /// Replaces π of `head` (a permutation of 0..M−1); recomputes its cycle decomposition.
    void set_permutation(index head, const std::vector<index>& perm)
    {
        require_head(head);
        if (m_kind != lrpe_kind::permutation) detail::fail("lrpe kind (set_permutation)", "lrpe_kind::permutation", "another kind");
        if (index(perm.size()) != m_dim) detail::fail("permutation size", m_dim, perm.size());
        std::vector<char> seen(std::size_t(m_dim), 0);
        for (index j = 0; j < m_dim; ++j) {
            const index p = perm[std::size_t(j)];
            if (p < 0 || p >= m_dim || seen[std::size_t(p)])
                detail::fail("permutation", detail::concat("each of 0..", m_dim - 1, " exactly once"),
                             detail::concat("entry ", j, " = ", p));
            seen[std::size_t(p)] = 1;
        }
        m_perm[std::size_t(head)] = perm;
        build_cycles(head);
    }

    // ---- policy interface --------------------------------------------------------------------------

    /// M' = 2M for cosine, M otherwise.
    index post_output_dim(index feature_dim) const { return m_kind == lrpe_kind::cosine ? 2 * feature_dim : feature_dim; }

    /// \brief Scores stay >= 0 for non-negative features only for cosine + cosFormer θ with P = I or odd-even
    /// (a permutation keeps features non-negative) and |offset|·θ <= π/2, i.e. max_offset <= max_len.
    bool preserves_positivity(index max_offset) const
    {
        if (!positivity_possible()) return false;
        if (max_offset > m_opt.max_len) return false;
        // θ is public: make sure it still holds the cosFormer value (not raised since construction).
        const double limit = cosformer_theta();
        for (index i = 0; i < theta.size(); ++i)
            if (!(std::abs(theta.data()[i]) <= limit)) return false;
        return true;
    }

    /// \brief Whether preserves_positivity can hold for some offset: cosine + cosFormer θ + P = I or odd-even.
    /// Only true → false changes are possible later (set_theta, set_householder), so the core refuses `sum`
    /// at construction when this is false, and checks preserves_positivity per call otherwise.
    bool positivity_possible() const
    {
        return m_kind == lrpe_kind::cosine && m_opt.theta == lrpe_theta::cosformer &&
               (m_opt.basis == lrpe_basis::identity || m_opt.basis == lrpe_basis::odd_even);
    }

    /// Checks `head` and the head's parameters (θ set, its shape and finiteness, Householder vector) before any work.
    void check_input(index /*input_dim*/, index head) const
    {
        require_head(head);
        if (theta.size() == 0 && theta_count() > 0)
            detail::fail("theta (lrpe_theta::explicit_values)",
                         detail::concat("values (", m_heads, ", ", theta_count(), ") loaded by set_theta before the first call"),
                         "none set");
        check_theta_matrix(theta);
        if (m_opt.basis == lrpe_basis::householder) {
            if (householder.rows() != m_heads || householder.cols() != m_dim)
                detail::fail("householder (vectors, one row per head)", detail::shape(m_heads, m_dim),
                             detail::shape(householder.rows(), householder.cols()));
            detail::require_all_finite("householder", householder.row(head));
            require_nonzero_householder(householder, head);
        }
    }

    /// Refuses positions outside [0, 2^53 − 1] (first_position .. first_position + count − 1): beyond, a
    /// position is no longer an exact double and the angles p·θ would lose their exactness.
    void check_positions(index first_position, index count) const { detail::check_angle_positions(first_position, count); }

    /// The feature width φ produces must be the width this encoding was built for.
    void check_feature_dim(index feature_dim, index head) const
    {
        if (feature_dim != m_dim) detail::fail("lrpe dim (feature width of the feature map's output)", m_dim, feature_dim);
        require_head(head);
    }

    /// \brief out (n, M') = T(φ row r, first_position + r) for each row r. Does not validate (the core calls
    /// check_input first); `phi` and `out` must not overlap.
    template <class S>
    void encode_post(const Eigen::Ref<const row_matrix<S>>& phi, Eigen::Ref<row_matrix<S>> out, index first_position,
                     index head, role /*which: queries and keys share T*/) const
    {
        const index n = phi.rows(), m = m_dim;
        if (n == 0) return;
        row_matrix<S> scratch; // permutation kind with a non-identity P: the gather needs a separate source
        const S* src = phi.data();
        index src_stride = phi.outerStride();
        if (m_opt.basis != lrpe_basis::identity) {
            if (m_kind == lrpe_kind::permutation) {
                scratch.resize(n, m);
                apply_basis<S>(phi, scratch, head);
                src = scratch.data();
                src_stride = m;
            } else {
                apply_basis<S>(phi, out.leftCols(m), head);
                src = out.data();
                src_stride = out.outerStride();
            }
        }
        switch (m_kind) {
        case lrpe_kind::rotate: rotate_rows<S>(src, src_stride, out, first_position, head); break;
        case lrpe_kind::cosine: cosine_rows<S>(src, src_stride, out, first_position, head); break;
        case lrpe_kind::permutation: permute_rows<S>(src, src_stride, out, first_position, head); break;
        }
    }

    /// \brief VJP of encode_post (docs/design.md §16): dphi (n, M) = Pᵀ Λ^{(s)ᵀ} dpsi_r for row r at position
    /// s = first_position + r (angles in double, as the forward), and, when grad is not null, adds head
    /// `head`'s parameter gradient to grad[0, gradient_size()): θ first (when theta_trainable()), then the
    /// learned Householder vector (when householder_trainable()). With x = P φ and g = Λᵀ dψ per row:
    ///
    ///     rotate  ∂L/∂θ_i = Σ_r s_r (x_a g_b − x_b g_a)         over pair (a, b) = (2i, 2i+1) or (i, i + ⌊M/2⌋)
    ///     cosine  ∂L/∂θ_j = Σ_r s_r x_j (c_j dψ_{M+j} − s_j dψ_j) with c, s = cos, sin(s_r θ_j)
    ///     v̂ = v/(‖v‖ + ε): ∂L/∂v̂ = −2 Σ_r ((v̂·φ_r) g_r + (v̂·g_r) φ_r),  ∂L/∂v = ∂L/∂v̂ /(‖v‖+ε) − v (vᵀ∂L/∂v̂)/(‖v‖(‖v‖+ε)²)
    ///
    /// Cost O(n·M) (O(n·M²) with the DCT basis), the angle tables once per block of 64 rows as the forward;
    /// parameter gradients accumulate in double. Does not validate (the core calls check_input first).
    template <class S>
    void encode_post_backward(const Eigen::Ref<const row_matrix<S>>& phi, const Eigen::Ref<const row_matrix<S>>& dpsi,
                              Eigen::Ref<row_matrix<S>> dphi, index first_position, index head, role /*which*/,
                              double* grad) const
    {
        const index n = dpsi.rows(), m = m_dim;
        if (n == 0) return;
        double* gtheta = grad && theta_trainable() ? grad : nullptr;
        double* gv = grad && householder_trainable() ? grad + theta_gradient_size() : nullptr;
        const bool identity = m_opt.basis == lrpe_basis::identity;
        row_matrix<S> x; // (n, M) = P φ, the core's input: only θ's gradient reads it
        const S* xs = nullptr;
        index x_stride = m;
        if (gtheta) {
            if (identity) {
                xs = phi.data();
                x_stride = phi.outerStride();
            } else {
                x.resize(n, m);
                apply_basis<S>(phi, x, head);
                xs = x.data();
            }
        }
        const auto core = [&](Eigen::Ref<row_matrix<S>> out) { // out (n, M) = Λᵀ dψ
            switch (m_kind) {
            case lrpe_kind::rotate: rotate_rows_backward<S>(dpsi, out, xs, x_stride, first_position, head, gtheta); break;
            case lrpe_kind::cosine: cosine_rows_backward<S>(dpsi, out, xs, x_stride, first_position, head, gtheta); break;
            case lrpe_kind::permutation: permute_rows_backward<S>(dpsi, out, first_position, head); break;
            }
        };
        if (identity) {
            core(dphi);
            return;
        }
        row_matrix<S> g(n, m); // (n, M) = Λᵀ dψ = ∂L/∂(P φ)
        core(g);
        apply_basis_transpose<S>(g, dphi, head);
        if (gv) householder_gradient<S>(phi, g, head, gv);
    }

    // ---- parameter gradients (docs/design.md §16) ----------------------------------------------------

    /// \brief Gradients of the trainable parameters, in double, with their shapes; a frozen part is empty (0 × 0).
    /// θ is trainable when it holds explicit values (lrpe_theta::explicit_values: the θ constructor or
    /// set_theta); the RoPE schedule and cosFormer's π/(2·max_len) are fixed. The Householder vector is
    /// trainable when learned (set_householder(v, true)); the seeded one is fixed. Permutations are discrete.
    struct parameter_gradients {
        row_matrix<double> theta;       ///< (H, theta_count()) when theta_trainable(), else empty
        row_matrix<double> householder; ///< (H, M) when householder_trainable(), else empty
        parameter_gradients& operator+=(const parameter_gradients& other)
        {
            theta += other.theta;
            householder += other.householder;
            return *this;
        }
    };
    bool theta_trainable() const { return theta_count() > 0 && m_opt.theta == lrpe_theta::explicit_values; }
    bool householder_trainable() const { return m_opt.basis == lrpe_basis::householder && householder_learned; }
    /// Zeros with the shapes of the trainable parameters (frozen parts empty).
    parameter_gradients make_parameter_gradients() const
    {
        return {row_matrix<double>::Zero(theta_trainable() ? m_heads : 0, theta_gradient_size()),
                row_matrix<double>::Zero(householder_trainable() ? m_heads : 0, householder_trainable() ? m_dim : 0)};
    }
    /// One head's flat gradient count: θ's then the Householder vector's.
    index gradient_size() const { return theta_gradient_size() + (householder_trainable() ? m_dim : 0); }
    /// pg's rows of `head` += flat[0, gradient_size()) in the layout of encode_post_backward's grad.
    void add_gradients(index head, const double* flat, parameter_gradients& pg) const
    {
        const index t = theta_gradient_size();
        if (t > 0) pg.theta.row(head) += Eigen::Map<const Eigen::RowVectorXd>(flat, t);
        if (householder_trainable()) pg.householder.row(head) += Eigen::Map<const Eigen::RowVectorXd>(flat + t, m_dim);
    }
    /// Throws naming the member when pg's shapes are not make_parameter_gradients()'s.
    void validate_gradients(const parameter_gradients& pg) const
    {
        const parameter_gradients want = make_parameter_gradients();
        if (pg.theta.rows() != want.theta.rows() || pg.theta.cols() != want.theta.cols())
            detail::fail("parameter_gradients.theta (empty when θ is fixed)", detail::shape(want.theta.rows(), want.theta.cols()),
                         detail::shape(pg.theta.rows(), pg.theta.cols()));
        if (pg.householder.rows() != want.householder.rows() || pg.householder.cols() != want.householder.cols())
            detail::fail("parameter_gradients.householder (empty unless learned)",
                         detail::shape(want.householder.rows(), want.householder.cols()),
                         detail::shape(pg.householder.rows(), pg.householder.cols()));
    }

    // ---- conveniences (validated) ------------------------------------------------------------------

    /// T(x_r, first_position + r) for the rows of x (n, M): (n, M').
    template <class S>
    row_matrix<S> transform(const Eigen::Ref<const row_matrix<S>>& x, index first_position, index head = 0) const
    {
        check_feature_dim(x.cols(), head);
        check_input(x.cols(), head);
        check_positions(first_position, x.rows());
        row_matrix<S> out(x.rows(), post_output_dim(m_dim));
        encode_post<S>(x, out, first_position, head, role::query);
        return out;
    }
    template <class Derived>
    row_matrix<typename Derived::Scalar> transform(const Eigen::MatrixBase<Derived>& x, index first_position, index head = 0) const
    {
        using S = typename Derived::Scalar;
        const row_matrix<S> copy = x;
        return transform<S>(Eigen::Ref<const row_matrix<S>>(copy), first_position, head);
    }

    /// The explicit real matrix M_s (M', M) of T(·, s) for `head`, in double: T(x, s) = M_s x.
    row_matrix<double> transform_matrix(index position, index head = 0) const
    {
        check_input(m_dim, head);
        detail::require_non_negative("position", position);
        check_positions(position, 1);
        row_matrix<double> mat(post_output_dim(m_dim), m_dim);
        row_matrix<double> e(1, m_dim), col(1, mat.rows());
        for (index j = 0; j < m_dim; ++j) { // column j = T(e_j, s): every row of one call has its own position
            e.setZero();
            e(0, j) = 1.0;
            encode_post<double>(e, col, position, head, role::query);
            mat.col(j) = col.row(0).transpose();
        }
        return mat;
    }

private:
    static lrpe_options with_explicit(lrpe_options opt)
    {
        opt.theta = lrpe_theta::explicit_values;
        return opt;
    }

    double cosformer_theta() const
    {
        return 3.14159265358979323846 / (2.0 * double(std::max<index>(m_opt.max_len, 1)));
    }

    void require_head(index head) const
    {
        if (head < 0 || head >= m_heads) detail::fail("head", detail::concat("a value in [0, ", m_heads, ")"), head);
    }

    // Exactly zero only: stableNorm does not underflow, so tiny vectors (1e-170 entries) pass.
    void require_nonzero_householder(const row_matrix<double>& vectors, index head) const
    {
        if (!(vectors.row(head).stableNorm() > 0.0))
            detail::fail("householder vector", "a non-zero vector", detail::concat("all entries zero for head ", head));
    }

    void check_theta_matrix(const row_matrix<double>& values) const
    {
        if (values.rows() != m_heads || values.cols() != theta_count())
            detail::fail("theta (values per head: rotated pairs for rotate, M for cosine, none for permutation)",
                         detail::shape(m_heads, theta_count()), detail::shape(values.rows(), values.cols()));
        detail::require_all_finite("theta", values);
    }

    void init_theta()
    {
        const index count = theta_count();
        if (m_opt.theta == lrpe_theta::explicit_values && count > 0) { // set_theta loads it; calls refused until then
            theta.resize(0, 0);
            return;
        }
        theta.resize(m_heads, count);
        if (count == 0) return;
        if (m_opt.theta == lrpe_theta::cosformer) {
            theta.setConstant(cosformer_theta());
            return;
        }
        // rope: base^{−2i/e}.
        const double e = m_kind == lrpe_kind::rotate ? 2.0 * double(m_rotated) : double(m_dim);
        for (index i = 0; i < count; ++i) theta(0, i) = std::pow(m_opt.base, -2.0 * double(i) / e);
        for (index h = 1; h < m_heads; ++h) theta.row(h) = theta.row(0);
    }

    void init_basis()
    {
        const index m = m_dim;
        switch (m_opt.basis) {
        case lrpe_basis::identity: break;
        case lrpe_basis::householder: {
            householder.resize(m_heads, m);
            for (index h = 0; h < m_heads; ++h) {
                random::philox_stream stream(m_opt.seed, random::purpose::lrpe_householder, std::uint32_t(h));
                stream.fill_normal<double>(0, householder.row(h).data(), m);
                const double norm = householder.row(h).stableNorm();
                // A draw of M Gaussians is zero with probability 0; the check keeps the invariant explicit.
                if (!(norm > 0.0)) detail::fail("householder vector (seeded draw)", "a non-zero vector", "zero");
                householder.row(h) /= norm; // fixed vector: normalized exactly once, no eps
            }
            householder_learned = false;
            break;
        }
        case lrpe_basis::odd_even: {
            m_gather.resize(std::size_t(m));
            const index upper = (m + 1) / 2; // ⌈M/2⌉
            for (index j = 0; j < m; ++j) m_gather[std::size_t(j)] = (j % 2 == 0) ? j / 2 : j / 2 + upper;
            break;
        }
        case lrpe_basis::dct: {
            m_dct.resize(m, m); // C_{kn} = √(2/M)·c_k·cos(π(2n+1)k/(2M)), c_0 = 1/√2
            const double pi = 3.14159265358979323846;
            for (index k = 0; k < m; ++k)
                for (index n = 0; n < m; ++n)
                    m_dct(k, n) = std::sqrt(2.0 / double(m)) * (k == 0 ? std::sqrt(0.5) : 1.0) *
                                  std::cos(pi * double(2 * n + 1) * double(k) / (2.0 * double(m)));
            break;
        }
        }
    }

    void init_permutations()
    {
        m_perm.assign(std::size_t(m_heads), std::vector<index>());
        m_cycles.assign(std::size_t(m_heads), cycles());
        for (index h = 0; h < m_heads; ++h) {
            // Fisher–Yates on keyed uniforms: the same π for a seed on every platform.
            random::philox_stream stream(m_opt.seed, random::purpose::lrpe_permutation, std::uint32_t(h));
            std::vector<index>& p = m_perm[std::size_t(h)];
            p.resize(std::size_t(m_dim));
            for (index j = 0; j < m_dim; ++j) p[std::size_t(j)] = j;
            for (index j = m_dim - 1; j > 0; --j) {
                const index r = std::min<index>(j, static_cast<index>(stream.uniform(std::uint64_t(j)) * double(j + 1)));
                std::swap(p[std::size_t(j)], p[std::size_t(r)]);
            }
            build_cycles(h);
        }
    }

    // π = product of disjoint cycles (c_0 → c_1 → … → c_{L−1} → c_0 with c_{m+1} = π(c_m)), so
    // π^s(c_m) = c_{(m + s) mod L}: any power in O(M), whatever s (no table of 512 positions).
    struct cycles {
        std::vector<index> members; // cycles one after another
        std::vector<index> start;   // start[c] .. start[c + 1] − 1 is cycle c
    };
    void build_cycles(index head)
    {
        const std::vector<index>& p = m_perm[std::size_t(head)];
        cycles& c = m_cycles[std::size_t(head)];
        c.members.clear();
        c.start.assign(1, 0);
        std::vector<char> seen(std::size_t(m_dim), 0);
        for (index j = 0; j < m_dim; ++j) {
            if (seen[std::size_t(j)]) continue;
            for (index x = j; !seen[std::size_t(x)]; x = p[std::size_t(x)]) {
                seen[std::size_t(x)] = 1;
                c.members.push_back(x);
            }
            c.start.push_back(index(c.members.size()));
        }
    }

    // y (n, M) = P x for the rows of x.
    template <class S, class Out>
    void apply_basis(const Eigen::Ref<const row_matrix<S>>& x, Out&& y, index head) const
    {
        const index m = m_dim;
        switch (m_opt.basis) {
        case lrpe_basis::identity: y = x; break;
        case lrpe_basis::householder: {
            Eigen::Matrix<double, Eigen::Dynamic, 1> v = householder.row(head).transpose();
            if (householder_learned) v /= v.stableNorm() + 1e-6; // the authors' learned-v normalization, at each use
            const Eigen::Matrix<S, Eigen::Dynamic, 1> vs = v.template cast<S>();
            const Eigen::Matrix<S, Eigen::Dynamic, 1> w = x * vs; // (n)
            y = x;
            y.noalias() -= (S(2) * w) * vs.transpose(); // (n, M): x − 2 (x·v̂) v̂ᵀ
            break;
        }
        case lrpe_basis::odd_even:
            for (index r = 0; r < x.rows(); ++r)
                for (index j = 0; j < m; ++j) y(r, j) = x(r, m_gather[std::size_t(j)]);
            break;
        case lrpe_basis::dct: {
            const row_matrix<S> c = m_dct.template cast<S>();
            y.noalias() = x * c.transpose(); // (n, M): rows are (C x)ᵀ
            break;
        }
        }
    }

    index theta_gradient_size() const { return theta_trainable() ? theta_count() : 0; }

    // y (n, M) = Pᵀ g for the rows of g (P is orthogonal: Householder symmetric, odd-even a permutation).
    template <class S>
    void apply_basis_transpose(const row_matrix<S>& g, Eigen::Ref<row_matrix<S>> y, index head) const
    {
        switch (m_opt.basis) {
        case lrpe_basis::identity: y = g; break;
        case lrpe_basis::householder: apply_basis<S>(g, y, head); break;
        case lrpe_basis::odd_even:
            for (index r = 0; r < g.rows(); ++r)
                for (index j = 0; j < m_dim; ++j) y(r, m_gather[std::size_t(j)]) = g(r, j);
            break;
        case lrpe_basis::dct: {
            const row_matrix<S> c = m_dct.template cast<S>();
            y.noalias() = g * c; // (n, M): rows are (Cᵀ g)ᵀ
            break;
        }
        }
    }

    // gv (M) += ∂L/∂v through v̂ = v/(‖v‖ + 1e-6) for x = φ − 2 (φ·v̂) v̂ and ∂L/∂x = g (rows), in double.
    template <class S>
    void householder_gradient(const Eigen::Ref<const row_matrix<S>>& phi, const row_matrix<S>& g, index head, double* gv) const
    {
        const Eigen::VectorXd v = householder.row(head).transpose();
        const double norm = v.stableNorm(), scale = norm + 1e-6;
        const Eigen::VectorXd vhat = v / scale;
        const row_matrix<double> pd = phi.template cast<double>(), gd = g.template cast<double>(); // (n, M)
        const Eigen::VectorXd a = pd * vhat, b = gd * vhat;                                         // (n)
        const Eigen::VectorXd w = -2.0 * (gd.transpose() * a + pd.transpose() * b);                // (M) ∂L/∂v̂
        Eigen::Map<Eigen::VectorXd>(gv, m_dim) += w / scale - v * (v.dot(w) / (norm * scale * scale));
    }

    // Pair (a, b) → (a cos − b sin, b cos + a sin): the rotation R(sθ) whose powers compose.
    template <class S>
    void rotate_rows(const S* src, index src_stride, Eigen::Ref<row_matrix<S>> out, index first, index head) const
    {
        const index n = out.rows(), m = m_dim, pairs = m_rotated;
        S* dst0 = out.data();
        const index dst_stride = out.outerStride();
        const bool in_place = src == dst0 && src_stride == dst_stride;
        if (!in_place) {
            // Unrotated channels pass through: interleaved [2·pairs, M), half-split [pairs, h) ∪ [h + pairs, M).
            for (index r = 0; r < n; ++r) {
                const S* x = src + r * src_stride;
                S* y = dst0 + r * dst_stride;
                if (m_opt.layout == lrpe_layout::interleaved) {
                    for (index j = 2 * pairs; j < m; ++j) y[j] = x[j];
                } else {
                    for (index j = pairs; j < m_half; ++j) y[j] = x[j];
                    for (index j = m_half + pairs; j < m; ++j) y[j] = x[j];
                }
            }
        }
        if (pairs == 0) return;
        const double* th = theta.row(head).data();
        const bool interleaved = m_opt.layout == lrpe_layout::interleaved;
        const index h = m_half;
        detail::for_each_angle_block<S>(th, pairs, first, n, [&](index r0, index rows, const S* cs, const S* sn) {
            for (index r = 0; r < rows; ++r) {
                const S* x = src + (r0 + r) * src_stride;
                S* y = dst0 + (r0 + r) * dst_stride;
                const S* c = cs + r * pairs;
                const S* s = sn + r * pairs;
                if (interleaved) {
                    for (index i = 0; i < pairs; ++i) {
                        const S a = x[2 * i], b = x[2 * i + 1];
                        y[2 * i] = a * c[i] - b * s[i];
                        y[2 * i + 1] = b * c[i] + a * s[i];
                    }
                } else {
                    for (index i = 0; i < pairs; ++i) {
                        const S a = x[i], b = x[h + i];
                        y[i] = a * c[i] - b * s[i];
                        y[h + i] = b * c[i] + a * s[i];
                    }
                }
            }
        });
    }

    // [y ⊙ cos sθ ; y ⊙ sin sθ]: the real and imaginary parts of diag(e^{isθ}) y.
    template <class S>
    void cosine_rows(const S* src, index src_stride, Eigen::Ref<row_matrix<S>> out, index first, index head) const
    {
        const index m = m_dim;
        S* dst0 = out.data();
        const index dst_stride = out.outerStride();
        const double* th = theta.row(head).data();
        detail::for_each_angle_block<S>(th, m, first, out.rows(), [&](index r0, index rows, const S* cs, const S* sn) {
            for (index r = 0; r < rows; ++r) {
                const S* x = src + (r0 + r) * src_stride;
                S* y = dst0 + (r0 + r) * dst_stride;
                const S* c = cs + r * m;
                const S* s = sn + r * m;
                for (index j = 0; j < m; ++j) {
                    const S v = x[j]; // read before write: x may be y's left half
                    y[m + j] = v * s[j];
                    y[j] = v * c[j];
                }
            }
        });
    }

    // g = R(sθ)ᵀ dψ per pair, (da, db) → (da cos + db sin, db cos − da sin); pass-through channels copy.
    // With x (rows of P φ, null when θ's gradient is not wanted): gtheta_i += s (x_a g_b − x_b g_a), since
    // ∂ψ_a/∂α = −ψ_b, ∂ψ_b/∂α = ψ_a for α = sθ_i and dψ_b ψ_a − dψ_a ψ_b = x_a g_b − x_b g_a.
    template <class S>
    void rotate_rows_backward(const Eigen::Ref<const row_matrix<S>>& dpsi, Eigen::Ref<row_matrix<S>> g, const S* x,
                              index x_stride, index first, index head, double* gtheta) const
    {
        const index n = g.rows(), m = m_dim, pairs = m_rotated, h = m_half;
        const bool interleaved = m_opt.layout == lrpe_layout::interleaved;
        for (index r = 0; r < n; ++r) {
            if (interleaved) {
                g.row(r).segment(2 * pairs, m - 2 * pairs) = dpsi.row(r).segment(2 * pairs, m - 2 * pairs);
            } else {
                g.row(r).segment(pairs, h - pairs) = dpsi.row(r).segment(pairs, h - pairs);
                g.row(r).segment(h + pairs, m - h - pairs) = dpsi.row(r).segment(h + pairs, m - h - pairs);
            }
        }
        if (pairs == 0) return;
        // The layouts get their own loops (unit-stride pairs vectorize); the gradient terms are formed in S,
        // whose rounding (<= 2u |x||g| per pair) is of the order of g's own, and accumulated in double.
        detail::for_each_angle_block<S>(theta.row(head).data(), pairs, first, n, [&](index r0, index rows, const S* cs, const S* sn) {
            for (index r = 0; r < rows; ++r) {
                const S* dy = dpsi.data() + (r0 + r) * dpsi.outerStride();
                S* y = g.data() + (r0 + r) * g.outerStride();
                const S* c = cs + r * pairs;
                const S* s = sn + r * pairs;
                if (interleaved) {
                    for (index i = 0; i < pairs; ++i) {
                        const S da = dy[2 * i], db = dy[2 * i + 1];
                        y[2 * i] = da * c[i] + db * s[i];
                        y[2 * i + 1] = db * c[i] - da * s[i];
                    }
                } else {
                    for (index i = 0; i < pairs; ++i) {
                        const S da = dy[i], db = dy[h + i];
                        y[i] = da * c[i] + db * s[i];
                        y[h + i] = db * c[i] - da * s[i];
                    }
                }
                if (!gtheta) continue;
                const S* xr = x + (r0 + r) * x_stride;
                const double pos = double(first + r0 + r);
                if (interleaved) {
                    for (index i = 0; i < pairs; ++i) gtheta[i] += pos * double(xr[2 * i] * y[2 * i + 1] - xr[2 * i + 1] * y[2 * i]);
                } else {
                    for (index i = 0; i < pairs; ++i) gtheta[i] += pos * double(xr[i] * y[h + i] - xr[h + i] * y[i]);
                }
            }
        });
    }

    // g_j = c_j dψ_j + s_j dψ_{M+j}; with x (rows of P φ, or null): gtheta_j += s x_j (c_j dψ_{M+j} − s_j dψ_j).
    template <class S>
    void cosine_rows_backward(const Eigen::Ref<const row_matrix<S>>& dpsi, Eigen::Ref<row_matrix<S>> g, const S* x,
                              index x_stride, index first, index head, double* gtheta) const
    {
        const index m = m_dim;
        detail::for_each_angle_block<S>(theta.row(head).data(), m, first, g.rows(), [&](index r0, index rows, const S* cs, const S* sn) {
            for (index r = 0; r < rows; ++r) {
                const S* dy = dpsi.data() + (r0 + r) * dpsi.outerStride();
                S* y = g.data() + (r0 + r) * g.outerStride();
                const S* c = cs + r * m;
                const S* s = sn + r * m;
                for (index j = 0; j < m; ++j) y[j] = c[j] * dy[j] + s[j] * dy[m + j];
                if (!gtheta) continue;
                const S* xr = x + (r0 + r) * x_stride;
                const double pos = double(first + r0 + r);
                for (index j = 0; j < m; ++j) gtheta[j] += pos * double(xr[j] * (c[j] * dy[m + j] - s[j] * dy[j])); // terms in S, as rotate
            }
        });
    }

    // (Π^s)ᵀ: the forward's gather y[mem[i]] = x[mem[k]] becomes the scatter g[mem[k]] = dψ[mem[i]].
    template <class S>
    void permute_rows_backward(const Eigen::Ref<const row_matrix<S>>& dpsi, Eigen::Ref<row_matrix<S>> g, index first, index head) const
    {
        const cycles& cy = m_cycles[std::size_t(head)];
        const index count = index(cy.start.size()) - 1;
        for (index r = 0; r < g.rows(); ++r) {
            const S* dy = dpsi.data() + r * dpsi.outerStride();
            S* y = g.data() + r * g.outerStride();
            for (index c = 0; c < count; ++c) {
                const index* mem = cy.members.data() + cy.start[std::size_t(c)];
                const index len = cy.start[std::size_t(c + 1)] - cy.start[std::size_t(c)];
                index k = (first + r) % len; // positions are >= 0 (check_positions)
                for (index i = 0; i < len; ++i) {
                    y[mem[k]] = dy[mem[i]];
                    if (++k == len) k = 0;
                }
            }
        }
    }

    // (Π^s y)_j = y_{π^s(j)} with π^s from the cycle decomposition; src never aliases out.
    template <class S>
    void permute_rows(const S* src, index src_stride, Eigen::Ref<row_matrix<S>> out, index first, index head) const
    {
        const cycles& cy = m_cycles[std::size_t(head)];
        const index count = index(cy.start.size()) - 1;
        for (index r = 0; r < out.rows(); ++r) {
            const S* x = src + r * src_stride;
            S* y = out.data() + r * out.outerStride();
            const index s = first + r;
            for (index c = 0; c < count; ++c) {
                const index* mem = cy.members.data() + cy.start[std::size_t(c)];
                const index len = cy.start[std::size_t(c + 1)] - cy.start[std::size_t(c)];
                index k = s % len; // π^s(mem[i]) = mem[(i + s) mod len]
                if (k < 0) k += len; // C++ truncates: −1 % 3 is −1, the residue is 2
                for (index i = 0; i < len; ++i) {
                    y[mem[i]] = x[mem[k]];
                    if (++k == len) k = 0;
                }
            }
        }
    }

    lrpe_kind m_kind;
    index m_dim, m_heads;
    lrpe_options m_opt;
    index m_rotated = 0, m_half = 0;
    std::vector<index> m_gather;             // odd-even P: (P x)_j = x_{m_gather[j]}
    row_matrix<double> m_dct;                // DCT-II (M, M)
    std::vector<std::vector<index>> m_perm;  // π per head
    std::vector<cycles> m_cycles;            // cycle decomposition of π per head
};

} // namespace positional
} // namespace linrpe
