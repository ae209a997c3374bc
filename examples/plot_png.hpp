#pragma once
// Small raster plots for the tour: line plots and heat maps that read on their own (title, axes with
// ticks and labels, legend outside the data, colour bar, caption), written as PNG through Debian's libstb
// (stb_image_write) when it is found, else as binary PPM (portable, no dependency).
//
// Text: DejaVu Sans through stb_truetype when the font file is installed (Debian fonts-dejavu-core),
// else stb_easy_font's bitmap font scaled up (ASCII only: a few Greek letters are spelled out); without
// libstb there is no text at all.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#if defined(LINRPE_HAVE_STB)
#include <stb_easy_font.h>
#include <stb_image_write.h>
#include <stb_truetype.h>
#endif

namespace plot {

using rgb = std::array<std::uint8_t, 3>;

/// The file extension pictures get: png with libstb, ppm without it.
inline const char* extension()
{
#if defined(LINRPE_HAVE_STB)
    return "png";
#else
    return "ppm";
#endif
}

// ---- text ------------------------------------------------------------------------------------------

/// Coverage mask of a rendered string: a[y·w + x] in 0..255, the text's top-left at (0, 0).
struct mask {
    int w = 0, h = 0;
    std::vector<std::uint8_t> a;
};

inline std::vector<std::uint32_t> utf8_codepoints(const std::string& s)
{
    std::vector<std::uint32_t> out;
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        const int extra = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
        std::uint32_t cp = extra == 0 ? c : c & (0x3F >> extra);
        for (int k = 1; k <= extra && i + k < s.size(); ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3F);
        out.push_back(cp);
        i += std::size_t(extra) + 1;
    }
    return out;
}

/// The bitmap font knows ASCII only: spell out the few non-ASCII symbols the tour's labels use.
inline std::string ascii_fallback(const std::string& s)
{
    std::string out;
    for (const std::uint32_t cp : utf8_codepoints(s)) {
        switch (cp) {
        case 0x03B4: out += "delta"; break;
        case 0x03B8: out += "theta"; break;
        case 0x03C8: out += "psi"; break;
        case 0x03BA: out += "kappa"; break;
        case 0x03C3: out += "sigma"; break;
        case 0x2212: out += '-'; break;
        case 0x00B1: out += "+-"; break;
        case 0x00B7: out += '*'; break;
        case 0x2264: out += "<="; break;
        case 0x2265: out += ">="; break;
        case 0x27E8: out += '<'; break;
        case 0x27E9: out += '>'; break;
        case 0x2080: out += '0'; break;
        default: out += cp < 0x80 ? char(cp) : '?';
        }
    }
    return out;
}

/// Renders strings at a pixel height: TrueType when a font file is found, else the scaled bitmap font.
class typesetter {
public:
    static const typesetter& get()
    {
        static const typesetter instance;
        return instance;
    }
    bool truetype() const { return m_truetype; }

    mask render(const std::string& s, double px) const
    {
#if defined(LINRPE_HAVE_STB)
        if (m_truetype) return render_truetype(s, px);
        return render_bitmap(ascii_fallback(s), px);
#else
        (void)s, (void)px;
        return {};
#endif
    }

private:
    typesetter()
    {
#if defined(LINRPE_HAVE_STB)
        for (const char* path : {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
                                 "/usr/share/fonts/dejavu/DejaVuSans.ttf"}) {
            std::ifstream f(path, std::ios::binary);
            if (!f) continue;
            m_font.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
            if (!m_font.empty() && stbtt_InitFont(&m_info, m_font.data(), stbtt_GetFontOffsetForIndex(m_font.data(), 0))) {
                m_truetype = true;
                return;
            }
        }
#endif
    }

#if defined(LINRPE_HAVE_STB)
    mask render_truetype(const std::string& s, double px) const
    {
        const float scale = stbtt_ScaleForPixelHeight(&m_info, float(px));
        int ascent = 0, descent = 0, gap = 0;
        stbtt_GetFontVMetrics(&m_info, &ascent, &descent, &gap);
        const std::vector<std::uint32_t> cps = utf8_codepoints(s);
        // Pen positions first (advance + kerning), then the glyphs into a mask of the final width.
        std::vector<float> pen(cps.size() + 1, 0.f);
        for (std::size_t i = 0; i < cps.size(); ++i) {
            int advance = 0, lsb = 0;
            stbtt_GetCodepointHMetrics(&m_info, int(cps[i]), &advance, &lsb);
            const int kern = i + 1 < cps.size() ? stbtt_GetCodepointKernAdvance(&m_info, int(cps[i]), int(cps[i + 1])) : 0;
            pen[i + 1] = pen[i] + scale * float(advance + kern);
        }
        mask m;
        m.w = int(std::ceil(pen.back())) + 2;
        m.h = int(std::ceil(scale * float(ascent - descent))) + 1;
        m.a.assign(std::size_t(m.w) * m.h, 0);
        const int baseline = int(std::lround(scale * float(ascent)));
        for (std::size_t i = 0; i < cps.size(); ++i) {
            int gw = 0, gh = 0, xoff = 0, yoff = 0;
            unsigned char* g = stbtt_GetCodepointBitmap(&m_info, scale, scale, int(cps[i]), &gw, &gh, &xoff, &yoff);
            const int x0 = int(std::lround(pen[i])) + xoff, y0 = baseline + yoff;
            for (int y = 0; y < gh; ++y)
                for (int x = 0; x < gw; ++x) {
                    const int cx = x0 + x, cy = y0 + y;
                    if (cx < 0 || cy < 0 || cx >= m.w || cy >= m.h) continue;
                    auto& dst = m.a[std::size_t(cy) * m.w + cx];
                    dst = std::max(dst, g[y * gw + x]);
                }
            stbtt_FreeBitmap(g, nullptr);
        }
        return m;
    }

    static mask render_bitmap(std::string s, double px)
    {
        // stb_easy_font glyphs are 7 units above the baseline and 2 below, in a 12-unit line.
        const int k = std::max(1, int(std::lround(px / 8.0)));
        static std::vector<char> buffer(400000);
        const int quads = stb_easy_font_print(0.f, 0.f, s.data(), nullptr, buffer.data(), int(buffer.size()));
        mask m;
        m.w = k * stb_easy_font_width(s.data()) + 1;
        m.h = k * 10;
        m.a.assign(std::size_t(m.w) * m.h, 0);
        const float* v = reinterpret_cast<const float*>(buffer.data());
        for (int q = 0; q < quads; ++q) {
            const float* quad = v + q * 16; // 4 vertices of (x, y, z, colour) = 4 floats each
            for (int y = int(quad[1] * k); y < int(quad[9] * k); ++y)
                for (int x = int(quad[0] * k); x < int(quad[8] * k); ++x)
                    if (x >= 0 && y >= 0 && x < m.w && y < m.h) m.a[std::size_t(y) * m.w + x] = 255;
        }
        return m;
    }

    stbtt_fontinfo m_info{};
#endif
    std::vector<unsigned char> m_font;
    bool m_truetype = false;
};

enum class align { start, middle, end };

struct text_style {
    double size = 15;          ///< pixel height of the line (ascender to descender)
    rgb color{30, 30, 30};
    align h = align::start;    ///< anchor at the left, centre or right of the text box
    align v = align::start;    ///< anchor at the top, middle or bottom of the text box
    bool vertical = false;     ///< reads bottom to top (a y-axis label)
};

// ---- canvas ----------------------------------------------------------------------------------------

class canvas {
public:
    canvas(int width, int height) : m_w(width), m_h(height), m_px(std::size_t(width) * height * 3, 255) {}
    int width() const { return m_w; }
    int height() const { return m_h; }

    void set(int x, int y, rgb c) { blend(x, y, c, 255); }
    /// c over the pixel with coverage a in 0..255.
    void blend(int x, int y, rgb c, int a)
    {
        if (x < 0 || y < 0 || x >= m_w || y >= m_h || a <= 0) return;
        auto* p = m_px.data() + (std::size_t(y) * m_w + x) * 3;
        for (int ch = 0; ch < 3; ++ch) p[ch] = std::uint8_t((p[ch] * (255 - a) + c[ch] * a + 127) / 255);
    }
    /// The pixels [x0, x1) × [y0, y1).
    void fill(int x0, int y0, int x1, int y1, rgb c)
    {
        for (int y = std::max(0, y0); y < std::min(m_h, y1); ++y)
            for (int x = std::max(0, x0); x < std::min(m_w, x1); ++x) set(x, y, c);
    }
    void frame(int x0, int y0, int x1, int y1, rgb c)
    {
        fill(x0, y0, x1, y0 + 1, c);
        fill(x0, y1 - 1, x1, y1, c);
        fill(x0, y0, x0 + 1, y1, c);
        fill(x1 - 1, y0, x1, y1, c);
    }
    /// A line `width` pixels wide: coverage of a round pen swept along the segment (anti-aliased).
    void line(double x0, double y0, double x1, double y1, rgb c, double width = 2.0)
    {
        const double r = width / 2;
        const int xa = int(std::floor(std::min(x0, x1) - r - 1)), xb = int(std::ceil(std::max(x0, x1) + r + 1));
        const int ya = int(std::floor(std::min(y0, y1) - r - 1)), yb = int(std::ceil(std::max(y0, y1) + r + 1));
        const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
        for (int y = ya; y <= yb; ++y)
            for (int x = xa; x <= xb; ++x) {
                const double t = len2 > 0 ? std::clamp(((x - x0) * dx + (y - y0) * dy) / len2, 0.0, 1.0) : 0.0;
                const double ex = x - (x0 + t * dx), ey = y - (y0 + t * dy);
                const double d = std::sqrt(ex * ex + ey * ey);
                blend(x, y, c, int(255 * std::clamp(r + 0.5 - d, 0.0, 1.0)));
            }
    }
    void disk(double cx, double cy, double radius, rgb c) { line(cx, cy, cx, cy, c, 2 * radius); }

    /// Text anchored at (x, y) per `style`; returns the box it covers as {width, height}.
    std::pair<int, int> text(double x, double y, const std::string& s, const text_style& style = {})
    {
        const mask m = typesetter::get().render(s, style.size);
        const int bw = style.vertical ? m.h : m.w, bh = style.vertical ? m.w : m.h;
        const auto shift = [](align a, int extent) { return a == align::start ? 0 : a == align::middle ? extent / 2 : extent; };
        const int left = int(std::lround(x)) - shift(style.h, bw), top = int(std::lround(y)) - shift(style.v, bh);
        for (int v = 0; v < m.h; ++v)
            for (int u = 0; u < m.w; ++u) {
                const int a = m.a[std::size_t(v) * m.w + u];
                if (style.vertical) blend(left + v, top + (m.w - 1 - u), style.color, a);
                else blend(left + u, top + v, style.color, a);
            }
        return {bw, bh};
    }
    /// Width and height of `s` at `size` pixels (horizontal).
    static std::pair<int, int> measure(const std::string& s, double size)
    {
        const mask m = typesetter::get().render(s, size);
        return {m.w, m.h};
    }

    bool save(const std::string& path) const
    {
#if defined(LINRPE_HAVE_STB)
        return stbi_write_png(path.c_str(), m_w, m_h, 3, m_px.data(), m_w * 3) != 0;
#else
        std::FILE* f = std::fopen(path.c_str(), "wb");
        if (!f) return false;
        std::fprintf(f, "P6\n%d %d\n255\n", m_w, m_h);
        const bool ok = std::fwrite(m_px.data(), 1, m_px.size(), f) == m_px.size();
        std::fclose(f);
        return ok;
#endif
    }

private:
    int m_w, m_h;
    std::vector<std::uint8_t> m_px;
};

// ---- colour maps -----------------------------------------------------------------------------------

/// Piecewise-linear interpolation through equally spaced colour stops, t in [0, 1].
template <std::size_t K>
rgb interpolate(const std::array<rgb, K>& stops, double t)
{
    t = std::clamp(t, 0.0, 1.0) * double(K - 1);
    const std::size_t i = std::min<std::size_t>(std::size_t(t), K - 2);
    const double f = t - double(i);
    rgb out;
    for (int c = 0; c < 3; ++c) out[c] = std::uint8_t(std::lround(stops[i][c] * (1 - f) + stops[i + 1][c] * f));
    return out;
}

/// Sequential map for non-negative data, dark purple (low) → blue → green → yellow (high), ordered in
/// lightness so that it also reads in grey scale (the stops of matplotlib's viridis).
inline rgb sequential(double t)
{
    static constexpr std::array<rgb, 5> stops{{{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
    return interpolate(stops, t);
}

/// Diverging map for signed data, blue (t = 0, negative) → white (t = 1/2, zero) → red (t = 1, positive)
/// (ColorBrewer's RdBu stops); callers map a range symmetric around 0 so that white is exactly 0.
inline rgb diverging(double t)
{
    static constexpr std::array<rgb, 7> stops{
        {{33, 102, 172}, {103, 169, 207}, {209, 229, 240}, {247, 247, 247}, {253, 219, 199}, {239, 138, 98}, {178, 24, 43}}};
    return interpolate(stops, t);
}

// ---- axes ------------------------------------------------------------------------------------------

/// About `target` round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi].
inline std::vector<double> nice_ticks(double lo, double hi, int target = 6)
{
    if (!(hi > lo)) return {lo};
    const double raw = (hi - lo) / std::max(1, target), mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double step = raw / mag < 1.5 ? mag : raw / mag < 3.5 ? 2 * mag : raw / mag < 7.5 ? 5 * mag : 10 * mag;
    std::vector<double> ticks;
    for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + 1e-9 * step; t += step) ticks.push_back(std::abs(t) < 1e-12 * step ? 0.0 : t);
    return ticks;
}

/// A tick label with as many decimals as the tick spacing needs.
inline std::string tick_label(double v, double step)
{
    char buf[32];
    const double a = std::abs(step);
    if (a > 0 && (a < 1e-3 || std::abs(v) >= 1e6)) std::snprintf(buf, sizeof buf, "%.1e", v);
    else std::snprintf(buf, sizeof buf, "%.*f", std::max(0, int(std::ceil(-std::log10(a > 0 ? a : 1) - 1e-9))), v);
    return buf;
}

/// Short number for titles and captions.
inline std::string fmt(double v)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

constexpr double title_size = 19, label_size = 15, tick_size = 13, caption_size = 13;
const rgb axis_grey{90, 90, 90}, grid_grey{228, 228, 228};

/// The caption's paragraphs broken into lines of at most `width` pixels (at word boundaries).
inline std::vector<std::string> wrap(const std::vector<std::string>& paragraphs, int width)
{
    std::vector<std::string> lines;
    for (const auto& p : paragraphs) {
        std::string line, word;
        const auto flush_word = [&] {
            if (word.empty()) return;
            const std::string longer = line.empty() ? word : line + " " + word;
            if (!line.empty() && canvas::measure(longer, caption_size).first > width) lines.push_back(line), line = word;
            else line = longer;
            word.clear();
        };
        for (const char ch : p) {
            if (ch == ' ') flush_word();
            else word += ch;
        }
        flush_word();
        lines.push_back(line);
    }
    return lines;
}

/// Writes the caption from (x, y) downwards, wrapped to `width` pixels.
inline void caption(canvas& c, int x, int y, const std::vector<std::string>& paragraphs, int width)
{
    for (const auto& line : wrap(paragraphs, width)) y += c.text(x, y, line, {caption_size, {70, 70, 70}}).second + 2;
}

inline int caption_height(const std::vector<std::string>& paragraphs, int width)
{
    return int(wrap(paragraphs, width).size()) * (canvas::measure("Ag", caption_size).second + 2);
}

// ---- line plots ------------------------------------------------------------------------------------

struct series {
    std::string name;
    std::vector<std::pair<double, double>> points;
    rgb color;
    bool markers = false; ///< dots at the points (sampled data) instead of a line
};

/// A shaded range lo(x) .. hi(x) behind the curves (e.g. ±1 standard deviation), named in the legend.
struct band {
    std::string name;
    std::vector<std::array<double, 3>> points; ///< (x, lo, hi), x increasing
    rgb color;
};

struct line_plot_text {
    std::string title, xlabel, ylabel;
    std::vector<std::string> caption; ///< lines under the plot: what the picture shows and how to read it
};

/// Line plot of several series on shared axes: framed plot area with grid, ticks and labels on both axes,
/// the legend in a column right of the plot area, the caption below.
inline bool line_plot(const std::vector<series>& all, const line_plot_text& text, const std::string& path,
                      const std::vector<band>& bands = {}, int width = 960, int plot_height = 380)
{
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& s : all)
        for (const auto& [x, y] : s.points) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    for (const auto& b : bands)
        for (const auto& p : b.points) x0 = std::min(x0, p[0]), x1 = std::max(x1, p[0]), y0 = std::min(y0, p[1]), y1 = std::max(y1, p[2]);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;

    int legend_w = 0;
    for (const auto& s : all) legend_w = std::max(legend_w, canvas::measure(s.name, label_size).first);
    for (const auto& b : bands) legend_w = std::max(legend_w, canvas::measure(b.name, label_size).first);
    legend_w += 48;
    const int l = 92, t = 52, r = width - legend_w - 24, b = t + plot_height;
    canvas c(width, b + 62 + caption_height(text.caption, width - 48) + 8);
    const auto px = [&](double x) { return l + (x - x0) / (x1 - x0) * (r - l); };
    const auto py = [&](double y) { return b - (y - y0) / (y1 - y0) * (b - t); };

    const std::vector<double> xt = nice_ticks(x0, x1, 8), yt = nice_ticks(y0, y1, 6);
    const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1, ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
    for (const double v : xt) c.fill(int(px(v)), t, int(px(v)) + 1, b, grid_grey);
    for (const double v : yt) c.fill(l, int(py(v)), r, int(py(v)) + 1, grid_grey);
    if (y0 < 0 && y1 > 0) c.fill(l, int(py(0)), r, int(py(0)) + 1, {160, 160, 160});
    for (const auto& bd : bands)
        for (std::size_t i = 1; i < bd.points.size(); ++i) {
            const auto &p = bd.points[i - 1], &q = bd.points[i];
            for (int x = int(std::ceil(px(p[0]))); x < int(std::ceil(px(q[0]))); ++x) {
                const double f = (x - px(p[0])) / std::max(1e-9, px(q[0]) - px(p[0]));
                const double lo = p[1] + f * (q[1] - p[1]), hi = p[2] + f * (q[2] - p[2]);
                c.fill(x, int(std::lround(py(hi))), x + 1, int(std::lround(py(lo))) + 1, bd.color);
            }
        }
    for (const auto& s : all) {
        if (s.markers)
            for (const auto& [x, y] : s.points) c.disk(px(x), py(y), 2.6, s.color);
        else
            for (std::size_t i = 1; i < s.points.size(); ++i)
                c.line(px(s.points[i - 1].first), py(s.points[i - 1].second), px(s.points[i].first), py(s.points[i].second), s.color, 2.2);
    }
    c.frame(l, t, r + 1, b + 1, axis_grey);
    for (const double v : xt) {
        c.fill(int(px(v)), b, int(px(v)) + 1, b + 6, axis_grey);
        c.text(px(v), b + 8, tick_label(v, xstep), {tick_size, axis_grey, align::middle});
    }
    int ylab_w = 0;
    for (const double v : yt) {
        c.fill(l - 6, int(py(v)), l, int(py(v)) + 1, axis_grey);
        ylab_w = std::max(ylab_w, c.text(l - 9, py(v), tick_label(v, ystep), {tick_size, axis_grey, align::end, align::middle}).first);
    }
    c.text((l + r) / 2.0, b + 30, text.xlabel, {label_size, {30, 30, 30}, align::middle});
    c.text(l - 14 - ylab_w, (t + b) / 2.0, text.ylabel, {label_size, {30, 30, 30}, align::end, align::middle, true});
    c.text(width / 2.0, 14, text.title, {title_size, {0, 0, 0}, align::middle});

    int ly = t + 4;
    const int lx = r + 20;
    for (const auto& bd : bands) {
        c.fill(lx, ly + 3, lx + 28, ly + 15, bd.color);
        ly += c.text(lx + 36, ly, bd.name, {label_size}).second + 6;
    }
    for (const auto& s : all) {
        if (s.name.empty()) continue; // a second piece of an entry already in the legend
        if (s.markers) c.disk(lx + 14, ly + 9, 2.6, s.color);
        else c.line(lx, ly + 9, lx + 28, ly + 9, s.color, 2.2);
        ly += c.text(lx + 36, ly, s.name, {label_size}).second + 6;
    }
    caption(c, 24, b + 56, text.caption, width - 48);
    return c.save(path);
}

// ---- heat maps -------------------------------------------------------------------------------------

struct heatmap_text {
    std::string title, xlabel = "key position j", ylabel = "query position i", value_label;
    std::vector<std::string> caption;
};

/// How values map to colours.
struct heatmap_scale {
    bool signed_data = false;  ///< diverging map symmetric around 0 (else sequential from the minimum)
    double clip_quantile = 1;  ///< the colour range ends at this quantile of |values| (1: the maximum)
    /// Cells (i, j) drawn in a neutral grey and excluded from the range (e.g. j > i under a causal mask).
    std::function<bool(int, int)> masked;
};

/// Heat map of a (rows, cols) row-major array, `cell` pixels per entry, row 0 at the top: axes with
/// ticks on both sides of the matrix, a colour bar with ticks, the masked-cell key, title and caption.
inline bool heatmap(const std::vector<double>& values, int rows, int cols, const heatmap_text& text, const std::string& path,
                    const heatmap_scale& scale = {}, int cell = 3)
{
    std::vector<double> visible;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
            if (!scale.masked || !scale.masked(i, j)) visible.push_back(values[std::size_t(i) * cols + j]);
    double lo = 0, hi = 1;
    if (!visible.empty()) {
        std::vector<double> mag = visible;
        if (scale.signed_data) for (double& v : mag) v = std::abs(v);
        std::sort(mag.begin(), mag.end());
        const double top = mag[std::min(mag.size() - 1, std::size_t(scale.clip_quantile * double(mag.size() - 1)))];
        if (scale.signed_data) lo = -top, hi = top;
        else lo = mag.front(), hi = top;
        if (!(hi > lo)) hi = lo + 1;
    }
    const bool clipped = scale.clip_quantile < 1;
    const int l = 96, t = 60, w = cols * cell, h = rows * cell, r = l + w, b = t + h;
    const int bar_l = r + 36, bar_w = 20;
    const int width = bar_l + bar_w + 150;
    canvas c(width, b + 62 + caption_height(text.caption, width - 48) + 8);
    const rgb mask_grey{214, 214, 214};
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) {
            const bool m = scale.masked && scale.masked(i, j);
            const double v = values[std::size_t(i) * cols + j];
            const double u = (v - lo) / (hi - lo);
            c.fill(l + j * cell, t + i * cell, l + (j + 1) * cell, t + (i + 1) * cell,
                   m ? mask_grey : scale.signed_data ? diverging(u) : sequential(u));
        }
    c.frame(l - 1, t - 1, r + 1, b + 1, axis_grey);
    // Ticks at cell centres of round indices.
    const std::vector<double> xt = nice_ticks(0, cols - 1, 5), yt = nice_ticks(0, rows - 1, 5);
    for (const double v : xt) {
        const int x = l + int(v) * cell + cell / 2;
        c.fill(x, b + 1, x + 1, b + 7, axis_grey);
        c.text(x, b + 9, tick_label(v, 1), {tick_size, axis_grey, align::middle});
    }
    int ylab_w = 0;
    for (const double v : yt) {
        const int y = t + int(v) * cell + cell / 2;
        c.fill(l - 7, y, l - 1, y + 1, axis_grey);
        ylab_w = std::max(ylab_w, c.text(l - 10, y, tick_label(v, 1), {tick_size, axis_grey, align::end, align::middle}).first);
    }
    c.text((l + r) / 2.0, b + 30, text.xlabel, {label_size, {30, 30, 30}, align::middle});
    c.text(l - 16 - ylab_w, (t + b) / 2.0, text.ylabel, {label_size, {30, 30, 30}, align::end, align::middle, true});
    c.text(width / 2.0, 14, text.title, {title_size, {0, 0, 0}, align::middle});

    // Colour bar: value lo at the bottom, hi at the top.
    for (int y = 0; y < h; ++y) {
        const double u = 1.0 - (y + 0.5) / h;
        c.fill(bar_l, t + y, bar_l + bar_w, t + y + 1, scale.signed_data ? diverging(u) : sequential(u));
    }
    c.frame(bar_l - 1, t - 1, bar_l + bar_w + 1, b + 1, axis_grey);
    const std::vector<double> bt = nice_ticks(lo, hi, 6);
    const double bstep = bt.size() > 1 ? bt[1] - bt[0] : 1;
    for (const double v : bt) {
        const int y = b - int(std::lround((v - lo) / (hi - lo) * h));
        c.fill(bar_l + bar_w, y, bar_l + bar_w + 5, y + 1, axis_grey);
        c.text(bar_l + bar_w + 8, y, tick_label(v, bstep), {tick_size, axis_grey, align::start, align::middle});
    }
    if (clipped) {
        c.text(bar_l + bar_w / 2.0, t - 4, "\u2265 " + fmt(hi), {tick_size, axis_grey, align::middle, align::end});
        if (scale.signed_data) c.text(bar_l + bar_w / 2.0, b + 4, "\u2264 " + fmt(lo), {tick_size, axis_grey, align::middle});
    }
    if (!text.value_label.empty())
        c.text(bar_l + bar_w + 64, (t + b) / 2.0, text.value_label, {label_size, {30, 30, 30}, align::start, align::middle, true});
    if (scale.masked) {
        const int y = b + 30;
        c.fill(bar_l, y + 2, bar_l + bar_w, y + 16, mask_grey);
        c.frame(bar_l - 1, y + 1, bar_l + bar_w + 1, y + 17, axis_grey);
        c.text(bar_l + bar_w + 8, y, "masked", {tick_size, axis_grey});
    }
    caption(c, 24, b + 56, text.caption, width - 48);
    return c.save(path);
}

} // namespace plot
