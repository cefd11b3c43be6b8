"""cnn_jax: convolutional networks from first principles, in JAX and Flax."""
