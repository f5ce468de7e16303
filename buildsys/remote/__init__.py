"""Remote execution: the environment image and the AWS Batch and Docker backends."""
