"""VQ-Diffusion with mask-and-replace corruption (Improved VQ-Diffusion section 2), the trained baseline.

config.py     DiffusionConfig: the ``model.diffusion`` schedule section
schedule.py   MaskAndReplace: Q_t (Eq. 2), its products and Q-bar_t (Eq. 4), q_sample, the timestep of a mask ratio
posterior.py  q(x_{t-1} | x_t, x_0) (Eq. 3), p(x_{t-1} | x_t) (Eq. 5), the reverse step
loss.py       the variational bound + the auxiliary x_0 loss
model.py      VQDiffusionTransformer: the PDM decoder with a timestep embedding, predicting p(x_0 | x_t)

Sampling (the plain reverse chain and the high-quality strategy of Improved VQ-Diffusion 3.2) is
``training.model.sampling.diffusion``. Nothing is imported here: ``training.model.config`` imports
``config.py`` and the model imports that module back.
"""
