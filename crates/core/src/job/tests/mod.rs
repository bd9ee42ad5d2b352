mod base_models;
mod given_when_then;
mod matrix;
mod props;
mod upcasting;
mod webhooks;
