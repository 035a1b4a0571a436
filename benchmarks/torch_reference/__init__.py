"""A PyTorch reference of hvae_jax's models and objective, parameter transfer to and from Flax, and two trainers:
the plain one (host-densified batches, as common public Mult-VAE ports) and an optimised one (sparse first layer,
`torch.compile`)."""
