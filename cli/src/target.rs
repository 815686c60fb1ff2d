//! Where the mesh runs and how its components' endpoints are reached (being written).
