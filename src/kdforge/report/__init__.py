"""Tables, plots and the HTML report from run directories; reads files only, imports
nothing of training (``kdforge report``: :func:`kdforge.report.build.write_report`)."""

from kdforge.report.build import build_report, write_report
from kdforge.report.plots import plot_curves, read_curve
from kdforge.report.tables import Row, build_rows, markdown_table, mean_std, rich_table

__all__ = ["Row", "build_report", "build_rows", "markdown_table", "mean_std", "plot_curves",
           "read_curve", "rich_table", "write_report"]
