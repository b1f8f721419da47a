//! Fitting a Linux host to the node: [`doctor`] checks the host and the data directory and says
//! what to change; [`iotune`] measures the disk with the node's own I/O path and writes the
//! io-properties file that `corelog serve --io-properties` applies. Neither changes the host:
//! the settings files and the systemd unit live in the repository's `tuning/` folder.

pub mod doctor;
pub mod iotune;
