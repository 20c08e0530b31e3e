//! kvcat-policies: train-time KV masking policies for KV-CAT, registered as plugins.
