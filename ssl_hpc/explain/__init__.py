"""CAM figures and CAM quality scores (pytorch-grad-cam): where a classifier looks, and how far to
trust the maps that say so. The fine-tune stage calls :func:`ssl_hpc.explain.run.explain_classifier`;
the aggregation step can call :func:`ssl_hpc.explain.figures.compare_models_figure` (with maps from
:func:`ssl_hpc.explain.cams.compute_cams`)."""
