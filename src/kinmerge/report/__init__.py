"""Views of kinship results and of the run store: plots, HTML reports, model cards."""
