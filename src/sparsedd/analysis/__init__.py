"""Why sparse double descent happens: re-dense training, interpolation, landscapes, sharpness,
learning distance, random reinitialization against the ticket, and phase detection."""
