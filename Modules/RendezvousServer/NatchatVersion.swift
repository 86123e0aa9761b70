/// natchat's release, as the server reports it to its operator.
public enum NatchatVersion {
    /// The version of this build, shown on the admin status page and exported as the
    /// `version` label of `natchat_server_info`, so that a fleet's dashboards tell which
    /// servers run which release (bump it with each issue's release).
    public static let current = "0.18.0"
}
