"""Tables and plots from run directories; reads files only, imports nothing of training."""

from kdforge.report.plots import plot_curves, read_curve
from kdforge.report.tables import Row, build_rows, markdown_table, mean_std, rich_table

__all__ = ["Row", "build_rows", "markdown_table", "mean_std", "plot_curves", "read_curve",
           "rich_table"]
