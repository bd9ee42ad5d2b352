mod given_when_then;
mod props;
mod upcasting;
mod webhooks;
