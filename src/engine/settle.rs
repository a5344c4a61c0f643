//! After a change is committed, the runtime is told what state owns now, so that what comes back after a reboot
//! is what state records (systemd: exactly those units enabled) and spawn's logs of releases no longer kept go.

use super::Engine;

impl Engine<'_> {
    /// Settle the runtime on the journal's state. A failure is a warning: traffic is already where it should
    /// be; only a reboot would bring back the wrong instances, and the next command settles again.
    pub fn settle_runtime(&mut self) {
        if let Err(e) = self.host.runtime().settle(self.journal.state()) {
            self.progress.warn(format!(
                "{e:#}: after a reboot the {} runtime may not bring back exactly what is live; the next cutover \
                 command tries again",
                self.host.runtime().kind()
            ));
        }
    }
}
