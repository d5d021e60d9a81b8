"""latkit's predictors: encodings, surrogate models, ESM-style fitting, NASFLAT-style transfer, metrics.

    from predictor.esm import fit
    surrogate, report, test_archs = fit("my-data", "nb201", "pi4", budget=500)
    surrogate.predict(["|nor_conv_3x3~0|+|...|"])
"""
