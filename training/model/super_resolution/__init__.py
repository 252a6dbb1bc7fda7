"""CogView2's hierarchical super-resolution (CogView2 section 3.3): a low-resolution token grid and the text ->
a higher-resolution token grid, by direct super-resolution then iterative LoPAR refinement.

config.py           SRModelConfig (``sr.model``) and SRSampleConfig (``sr.sample``)
local_attention.py  the local attention windows: 2D local (RF window x window, 4.2) and cross-resolution
lopar.py            the local parallel autoregressive (LoPAR) schedule of Eq. 6
model.py            SRTransformer: low-res tokens (encoder part) + high-res tokens (decoder part), one stack
sampling.py         direct super-resolution (Eq. 3), LoPAR refinement (Eq. 4-6), both chained
train_step.py       SRTrainModule: one masked-prediction micro-batch (direct SR: every token masked)
"""
