"""A user's own model module, as a researcher would write it (used by the user-model tests
through ``tests.user_model_module:small_cnn``): a custom registered layer, named taps."""

import keras


@keras.saving.register_keras_serializable(package="kd_user_test")
class Scale(keras.layers.Layer):
  """A trainable per-channel scale: a custom layer that must load in safe mode."""

  def build(self, input_shape):
    self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gain")

  def call(self, x):
    return x * self.gain


def small_cnn(input_shape, num_classes, filters=8):
  inputs = keras.Input(input_shape)
  x = keras.layers.Rescaling(1 / 255.0)(inputs)
  x = keras.layers.Conv2D(filters, 3, activation="relu", name="stage1")(x)
  x = Scale(name="scaled")(keras.layers.MaxPooling2D()(x))
  x = keras.layers.Flatten(name="pooled")(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x),
                     name="user_small_cnn")
