mod base_models;
mod custom_models;
mod given_when_then;
mod matrix;
mod props;
mod restarts;
mod upcasting;
mod webhooks;
