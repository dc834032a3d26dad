import Foundation
import PackagePlugin

/// Compiles the target's `Shaders/` (GLSL compute shaders listed in `shaders.txt`) to SPIR-V
/// with the pinned glslc and embeds them as Swift source.
@main
struct SPIRVShaders: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        guard let module = target as? SourceModuleTarget else { return [] }
        let shaders = module.directoryURL.appending(path: "Shaders")
        let inputs = try FileManager.default.contentsOfDirectory(at: shaders, includingPropertiesForKeys: nil)
            .filter { ["comp", "glsl", "txt", "version"].contains($0.pathExtension) }
            .sorted { $0.path < $1.path }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedShaders.swift")
        return [
            .buildCommand(
                displayName: "Compiling Vulkan compute shaders",
                executable: try context.tool(named: "spirv-embed").url,
                arguments: [shaders.path, output.path],
                inputFiles: inputs,
                outputFiles: [output])
        ]
    }
}
