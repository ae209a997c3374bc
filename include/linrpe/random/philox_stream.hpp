#pragma once
/// \file
/// \brief Keyed, counter-based random streams over Random123's Philox4x32-10 (Salmon et al., SC'11).
///
/// A stream is addressed by (seed, purpose, head, a, b) and indexed by a 64-bit position, so any block of
/// numbers is produced independently of every other: no sequential state, no dependence on the thread
/// count or on the order of calls, and the same numbers on every platform. Normals come from Box-Muller
/// on two 64-bit uniforms and are always computed in double (float users get the rounded double), so
/// float and double runs of the same seed see the same realization.

#include "../types.hpp"

#include <Random123/boxmuller.hpp>
#include <Random123/philox.h>
#include <Random123/uniform.hpp>

#include <algorithm>
#include <cstdint>

namespace linrpe {
namespace random {

/// The purposes under which linrpe draws numbers; a new purpose gets a new value, never a reused one.
enum class purpose : std::uint32_t {
    favor_omega = 1,      ///< FAVOR+/trig projection entries
    favor_norms = 2,      ///< chi-distributed row norms of orthogonal projections
    spe_noise = 3,        ///< SPE white noise (a = dimension, b = realization, index = position)
    spe_gate = 4,         ///< SPE gate noise epsilon (constant over positions)
    lrpe_householder = 5, ///< LRPE fixed Householder vector
    lrpe_permutation = 6, ///< LRPE random permutation
    spe_parameters = 7,   ///< SPE parameter initialization (a = tensor id, b = head, index = flat entry)
    user = 1000,          ///< first value free for user-defined policies
};

/// \brief A keyed stream of standard normals and uniforms, random access by index.
class philox_stream {
public:
    using engine = r123::Philox4x32;

    philox_stream(std::uint64_t seed, purpose what, std::uint32_t head = 0, std::uint32_t a = 0, std::uint32_t b = 0)
        : m_key{{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}},
          m_c0(static_cast<std::uint32_t>(what) << 20 ^ head), m_a(a), m_b(b)
    {
        // purpose occupies the high 12 bits and head the low 20 bits of counter word 0 (heads < 2^20);
        // mixing by xor keeps distinct (purpose, head) pairs distinct while head < 2^20.
    }

    /// The raw Philox4x32-10 block for block number `block` of this stream.
    engine::ctr_type block(std::uint64_t block) const
    {
        engine::ctr_type ctr{{m_c0, m_a, m_b ^ static_cast<std::uint32_t>(block >> 32), static_cast<std::uint32_t>(block)}};
        return engine()(ctr, m_key);
    }

    /// \brief Raw blocks first_block..first_block+count−1, word-interleaved: out[4i + w] = block(first_block + i)[w].
    ///
    /// The same bits as block(), computed 16 counters at a time with plain lane loops over Philox4x32-10's
    /// rounds (Random123's multipliers and key increments) so that compilers vectorize them; bulk consumers
    /// (SPE noise fields) spend most of their time here.
    void blocks(std::uint64_t first_block, index count, std::uint32_t* out) const
    {
        constexpr index lanes = 16;
        std::uint32_t c0[lanes], c1[lanes], c2[lanes], c3[lanes];
        for (index i0 = 0; i0 < count; i0 += lanes) {
            for (index l = 0; l < lanes; ++l) {
                const std::uint64_t b = first_block + static_cast<std::uint64_t>(i0 + l);
                c0[l] = m_c0;
                c1[l] = m_a;
                c2[l] = m_b ^ static_cast<std::uint32_t>(b >> 32);
                c3[l] = static_cast<std::uint32_t>(b);
            }
            std::uint32_t k0 = m_key[0], k1 = m_key[1];
            for (int round = 0; round < 10; ++round) {
                if (round > 0) {
                    k0 += PHILOX_W32_0;
                    k1 += PHILOX_W32_1;
                }
                for (index l = 0; l < lanes; ++l) {
                    const std::uint64_t p0 = std::uint64_t(PHILOX_M4x32_0) * c0[l];
                    const std::uint64_t p1 = std::uint64_t(PHILOX_M4x32_1) * c2[l];
                    const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
                    const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
                    c1[l] = static_cast<std::uint32_t>(p1);
                    c3[l] = static_cast<std::uint32_t>(p0);
                    c0[l] = n0;
                    c2[l] = n2;
                }
            }
            const index m = std::min(lanes, count - i0);
            for (index l = 0; l < m; ++l) {
                std::uint32_t* o = out + 4 * (i0 + l);
                o[0] = c0[l];
                o[1] = c1[l];
                o[2] = c2[l];
                o[3] = c3[l];
            }
        }
    }

    /// The `i`-th standard normal of the stream (pairs share one Philox block).
    double normal(std::uint64_t i) const
    {
        const auto r = block(i >> 1);
        const r123::double2 z = r123::boxmuller(join(r[0], r[1]), join(r[2], r[3]));
        return (i & 1) ? z.y : z.x;
    }

    /// The `i`-th uniform in (0, 1] (never 0, so logarithms are safe).
    double uniform(std::uint64_t i) const
    {
        const auto r = block(i >> 1);
        return (i & 1) ? r123::u01<double>(join(r[2], r[3])) : r123::u01<double>(join(r[0], r[1]));
    }

    /// Writes normals first, first+1, ..., first+n-1 to out[0..n-1], computing each Philox block once.
    template <class Scalar>
    void fill_normal(std::uint64_t first, Scalar* out, index n) const
    {
        index k = 0;
        std::uint64_t i = first;
        if (n > 0 && (i & 1)) { out[k++] = static_cast<Scalar>(normal(i++)); }
        for (; k + 1 < n; k += 2, i += 2) {
            const auto r = block(i >> 1);
            const r123::double2 z = r123::boxmuller(join(r[0], r[1]), join(r[2], r[3]));
            out[k] = static_cast<Scalar>(z.x);
            out[k + 1] = static_cast<Scalar>(z.y);
        }
        if (k < n) out[k] = static_cast<Scalar>(normal(i));
    }

private:
    static std::uint64_t join(std::uint32_t lo, std::uint32_t hi) { return std::uint64_t(hi) << 32 | lo; }

    engine::key_type m_key;
    std::uint32_t m_c0, m_a, m_b;
};

} // namespace random
} // namespace linrpe
