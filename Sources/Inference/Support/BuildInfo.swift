/// What the engine binary was built with; printed by `ccinfer version`.
public enum EmbeddedShadersInfo {
    /// The pinned shader compiler's `glslc --version`.
    public static var compiler: String { EmbeddedShaders.compiler }
    public static var flags: String { EmbeddedShaders.flags }
    public static var kernels: [String] { EmbeddedShaders.modules.keys.sorted() }
}
