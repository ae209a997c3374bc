#pragma once
// Minimal raster plots for the tour: heat maps and line plots with labels, written as PNG through
// Debian's libstb (stb_image_write) when it is found, else as binary PPM (portable, no dependency).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#if defined(LINRPE_HAVE_STB)
#include <stb_easy_font.h>
#include <stb_image_write.h>
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

class canvas {
public:
    canvas(int width, int height) : m_w(width), m_h(height), m_px(std::size_t(width) * height * 3, 255) {}
    int width() const { return m_w; }
    int height() const { return m_h; }

    void set(int x, int y, rgb c)
    {
        if (x < 0 || y < 0 || x >= m_w || y >= m_h) return;
        std::copy(c.begin(), c.end(), m_px.begin() + (std::size_t(y) * m_w + x) * 3);
    }
    void fill(int x0, int y0, int x1, int y1, rgb c)
    {
        for (int y = std::max(0, y0); y < std::min(m_h, y1); ++y)
            for (int x = std::max(0, x0); x < std::min(m_w, x1); ++x) set(x, y, c);
    }
    void line(double x0, double y0, double x1, double y1, rgb c)
    {
        const int steps = int(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
        for (int s = 0; s <= steps; ++s) {
            const double t = double(s) / steps;
            const int x = int(std::lround(x0 + t * (x1 - x0))), y = int(std::lround(y0 + t * (y1 - y0)));
            set(x, y, c);
            set(x + 1, y, c); // two pixels wide, readable after scaling
        }
    }
    /// Text with stb_easy_font (a built-in bitmap font); without libstb, text is skipped.
    void text(int x, int y, const std::string& s, rgb c = {0, 0, 0})
    {
#if defined(LINRPE_HAVE_STB)
        static std::vector<char> buffer(200000);
        std::string copy = s;
        unsigned char color[4] = {c[0], c[1], c[2], 255};
        const int quads = stb_easy_font_print(float(x), float(y), copy.data(), color, buffer.data(), int(buffer.size()));
        const float* v = reinterpret_cast<const float*>(buffer.data());
        for (int q = 0; q < quads; ++q) {
            const float* quad = v + q * 16; // 4 vertices of (x, y, z, color) = 4 floats each
            fill(int(quad[0]), int(quad[1]), int(quad[8]), int(quad[9]), c);
        }
#else
        (void)x, (void)y, (void)s, (void)c;
#endif
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

/// A perceptually ordered dark-blue → teal → yellow ramp for t in [0, 1].
inline rgb ramp(double t)
{
    t = std::clamp(t, 0.0, 1.0);
    const double r = std::clamp(1.6 * t - 0.5, 0.0, 1.0), g = std::clamp(0.15 + 0.85 * t, 0.0, 1.0),
                 b = std::clamp(0.55 + 0.6 * t - 1.1 * t * t, 0.0, 1.0);
    return {std::uint8_t(255 * r), std::uint8_t(255 * g), std::uint8_t(255 * b)};
}

inline std::string fmt(double v)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

/// Heat map of a (rows, cols) row-major array, each cell `cell` pixels, with a title and value range.
inline bool heatmap(const std::vector<double>& values, int rows, int cols, const std::string& title, const std::string& path,
                    int cell = 2)
{
    const int top = 24, left = 8;
    canvas c(left * 2 + cols * cell, top + rows * cell + 8);
    // Color range: the 1st to 99th percentile, so that a few large weights (the first causal rows, which
    // attend to a single key) do not wash out the rest.
    std::vector<double> sorted = values;
    std::sort(sorted.begin(), sorted.end());
    double lo = sorted[sorted.size() / 100], hi = sorted[sorted.size() - 1 - sorted.size() / 100];
    if (hi <= lo) hi = lo + 1;
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
            c.fill(left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell,
                   ramp((values[std::size_t(i) * cols + j] - lo) / (hi - lo)));
    c.text(left, 4, title + "   [" + fmt(lo) + ", " + fmt(hi) + "]");
    return c.save(path);
}

struct series {
    std::string name;
    std::vector<std::pair<double, double>> points;
    rgb color;
};

/// Line plot of several series on shared axes, with the axis ranges written at the corners.
inline bool line_plot(const std::vector<series>& all, const std::string& title, const std::string& xlabel,
                      const std::string& path, int width = 640, int height = 400)
{
    canvas c(width, height);
    const int l = 60, r = width - 20, t = 30, b = height - 40;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& s : all)
        for (const auto& [x, y] : s.points) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    const auto px = [&](double x) { return l + (x - x0) / (x1 - x0) * (r - l); };
    const auto py = [&](double y) { return b - (y - y0) / (y1 - y0) * (b - t); };
    const rgb axis{90, 90, 90};
    c.line(l, t, l, b, axis);
    c.line(l, b, r, b, axis);
    if (y0 < 0 && y1 > 0) c.line(l, py(0), r, py(0), {200, 200, 200});
    for (const auto& s : all)
        for (std::size_t i = 1; i < s.points.size(); ++i)
            c.line(px(s.points[i - 1].first), py(s.points[i - 1].second), px(s.points[i].first), py(s.points[i].second), s.color);
    c.text(l, 8, title);
    c.text(4, t, fmt(y1));
    c.text(4, b - 8, fmt(y0));
    c.text(l, b + 8, fmt(x0));
    c.text(r - 40, b + 8, fmt(x1));
    c.text((l + r) / 2 - 30, b + 22, xlabel);
    int ly = t + 6;
    for (const auto& s : all) {
        c.fill(r - 150, ly + 2, r - 138, ly + 6, s.color);
        c.text(r - 134, ly, s.name);
        ly += 12;
    }
    return c.save(path);
}

} // namespace plot
