"""The method figure of a report: test accuracy per method with error bars, one panel per
teacher -> student pair, as a self-contained SVG (no plotting library needed).

Each panel shows every distilled setting's mean test accuracy over seeds as a dot with a
+-1 std whisker, the labels-only student's mean as a dashed line with its +-1 std band,
and, in the title, the teacher's accuracy. ``panels`` come from report.method_panels.
"""

import html

_ROW, _LEFT, _WIDTH, _TOP, _BOTTOM = 22, 300, 420, 46, 34


def _x_scale(panel):
  """(low, high) of the panel's x axis: every mean +- std with a margin, in percent."""
  values = [m - s for _, m, s in panel["rows"]] + [m + s for _, m, s in panel["rows"]]
  base_mean, base_std = panel["baseline"]
  values += [base_mean - base_std, base_mean + base_std]
  low, high = min(values), max(values)
  margin = max(0.5, 0.05 * (high - low))
  return low - margin, high + margin


def _ticks(low, high, count=5):
  step = max((high - low) / count, 0.1)
  for nice in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20):
    if nice >= step:
      step = nice
      break
  first = step * int(low / step + 1)
  return [first + i * step for i in range(int((high - first) / step) + 1)]


def _panel(panel, y0):
  """SVG elements of one panel whose top is at ``y0``; returns (elements, height)."""
  low, high = _x_scale(panel)
  height = _TOP + _ROW * len(panel["rows"]) + _BOTTOM

  def x(value):
    return _LEFT + _WIDTH * (value - low) / (high - low)

  out = [f'<text x="10" y="{y0 + 18}" font-weight="bold">{html.escape(panel["title"])}'
         "</text>"]
  plot_top, plot_bottom = y0 + _TOP - 12, y0 + _TOP + _ROW * len(panel["rows"]) - 6
  base_mean, base_std = panel["baseline"]
  out.append(f'<rect x="{x(base_mean - base_std):.1f}" y="{plot_top}" '
             f'width="{x(base_mean + base_std) - x(base_mean - base_std):.1f}" '
             f'height="{plot_bottom - plot_top}" fill="#ddd"/>')
  out.append(f'<line x1="{x(base_mean):.1f}" y1="{plot_top}" x2="{x(base_mean):.1f}" '
             f'y2="{plot_bottom}" stroke="#555" stroke-dasharray="4 3"/>')
  out.append(f'<text x="{x(base_mean) + 3:.1f}" y="{plot_top - 2}" font-size="10" '
             f'fill="#555">labels only {base_mean:.2f}%</text>')
  for index, (label, mean, std) in enumerate(panel["rows"]):
    y = y0 + _TOP + _ROW * index
    color = "#1f77b4" if mean >= base_mean else "#d62728"
    out.append(f'<text x="{_LEFT - 8}" y="{y + 4}" text-anchor="end">{html.escape(label)}'
               "</text>")
    out.append(f'<line x1="{x(mean - std):.1f}" y1="{y}" x2="{x(mean + std):.1f}" y2="{y}" '
               f'stroke="{color}" stroke-width="2"/>')
    out.append(f'<circle cx="{x(mean):.1f}" cy="{y}" r="4" fill="{color}"/>')
    out.append(f'<text x="{x(mean + std) + 5:.1f}" y="{y + 4}" font-size="10">'
               f"{mean:.2f} +- {std:.2f}</text>")
  axis_y = plot_bottom + 4
  out.append(f'<line x1="{_LEFT}" y1="{axis_y}" x2="{_LEFT + _WIDTH}" y2="{axis_y}" '
             'stroke="black"/>')
  for tick in _ticks(low, high):
    out.append(f'<line x1="{x(tick):.1f}" y1="{axis_y}" x2="{x(tick):.1f}" y2="{axis_y + 4}" '
               'stroke="black"/>')
    out.append(f'<text x="{x(tick):.1f}" y="{axis_y + 16}" text-anchor="middle" '
               f'font-size="10">{tick:g}</text>')
  out.append(f'<text x="{_LEFT + _WIDTH / 2}" y="{axis_y + 28}" text-anchor="middle" '
             'font-size="10">test accuracy (%), mean +- std over seeds</text>')
  return out, height


def method_figure(panels):
  """An SVG document of ``panels`` [{'title', 'rows': [(label, mean %, std %)],
  'baseline': (mean %, std %)}], stacked vertically."""
  elements, y = [], 0
  for panel in panels:
    part, height = _panel(panel, y)
    elements += part
    y += height + 10
  width = _LEFT + _WIDTH + 110
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
          f'font-family="sans-serif" font-size="12">\n'
          f'<rect width="{width}" height="{y}" fill="white"/>\n'
          + "\n".join(elements) + "\n</svg>\n")
