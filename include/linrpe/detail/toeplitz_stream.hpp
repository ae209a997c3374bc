#pragma once
// IWYU pragma: private
/// \file
/// \brief toeplitz_stream: the streaming-decoder state of causal Toeplitz mixing (band history + far state).

#include "../types.hpp"
#include "relative_weights.hpp"
#include "toeplitz_mixer.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <utility>

namespace linrpe {
namespace detail {

/// \brief State of one causal (batch, head) sequence under Toeplitz weights.
///
/// Keys at least T_max positions behind every future query all carry c_far_behind (clipping), so they are
/// folded into one lagged linear-attention state far = Σ κ_j vx_jᵀ (M', Ex); only the last T_max tokens are
/// kept explicitly (κ and vx rows). A call with n new tokens mixes them against history + themselves with
/// any Toeplitz algorithm (keys start n − count positions before the queries), adds c_far_behind ψ far,
/// and evicts the oldest tokens into far. Per token O(T_max·(M' + Ex) + M'·Ex) time and
/// O(T_max·(M' + Ex) + M'·Ex) memory; with T_max beyond the sequence length the history simply grows (O(t)).
template <class S>
class toeplitz_stream {
public:
    void mix(const relative_weights<S>& w, const Eigen::Ref<const row_matrix<S>>& psi,
             const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx,
             Eigen::Ref<row_matrix<S>> num, index q_first, toeplitz_algorithm algo)
    {
        const index n = psi.rows(), m = kappa.cols(), ex = vx.cols();
        if (!m_initialized) { // not m_far.size() == 0: with M'·Ex = 0 that would reset the history every call
            m_initialized = true;
            m_far = row_matrix<S>::Zero(m, ex);
            m_keys.resize(0, m);
            m_values.resize(0, ex);
        }
        append(kappa, vx);
        const auto keys = m_keys.middleRows(m_begin, m_count);     // (count, M')
        const auto values = m_values.middleRows(m_begin, m_count); // (count, Ex)
        toeplitz_mix<S>(w, psi, keys, values, num, q_first, q_first + n - m_count, true, algo);
        if (m_evicted) num.noalias() += w.far_behind() * (psi * m_far);
        if (m_count > w.t_max) {
            const index e = m_count - w.t_max;
            m_far.noalias() += m_keys.middleRows(m_begin, e).transpose() * m_values.middleRows(m_begin, e);
            m_begin += e;
            m_count -= e;
            m_evicted = true;
        }
    }

    /// Tokens held explicitly (at most T_max between calls).
    index history() const { return m_count; }

    // Read access and wholesale replacement, for attention_state's export and validated import.
    bool empty() const { return m_far.size() == 0; }
    index feature_width() const { return m_far.rows(); }
    index value_width() const { return m_far.cols(); }
    bool evicted() const { return m_evicted; }
    auto keys() const { return m_keys.middleRows(m_begin, m_count); }     // (count, M')
    auto values() const { return m_values.middleRows(m_begin, m_count); } // (count, Ex)
    const row_matrix<S>& far() const { return m_far; }                    // (M', Ex)
    /// Replaces the state by a history of keys (count, M'), values (count, Ex) and the far state (M', Ex).
    void assign(row_matrix<S> keys, row_matrix<S> values, row_matrix<S> far, bool evicted)
    {
        m_initialized = far.size() > 0; // a started state (its widths are fixed); an empty one starts anew
        m_count = keys.rows();
        m_begin = 0;
        m_keys = std::move(keys);
        m_values = std::move(values);
        m_far = std::move(far);
        m_evicted = evicted;
    }

private:
    void append(const Eigen::Ref<const row_matrix<S>>& kappa, const Eigen::Ref<const row_matrix<S>>& vx)
    {
        const index n = kappa.rows();
        if (m_begin + m_count + n > m_keys.rows()) {
            // Compact to the top and at least double: amortized O(1) row copies per token.
            const index capacity = std::max<index>(m_keys.rows(), 2 * (m_count + n));
            row_matrix<S> keys(capacity, m_keys.cols()), values(capacity, m_values.cols());
            keys.topRows(m_count) = m_keys.middleRows(m_begin, m_count);
            values.topRows(m_count) = m_values.middleRows(m_begin, m_count);
            m_keys.swap(keys);
            m_values.swap(values);
            m_begin = 0;
        }
        m_keys.middleRows(m_begin + m_count, n) = kappa;
        m_values.middleRows(m_begin + m_count, n) = vx;
        m_count += n;
    }

    row_matrix<S> m_keys, m_values; // rows [m_begin, m_begin + m_count) are the history
    row_matrix<S> m_far;            // (M', Ex)
    index m_begin = 0, m_count = 0;
    bool m_evicted = false;
    bool m_initialized = false;
};

} // namespace detail
} // namespace linrpe
